"""A broker restart: noticed from Redis' run_id, its cause from the broker's pods (brokerrestarts.py)."""

from __future__ import annotations

import datetime

import pytest

from celery_operator.broker.probe import RedisInstance
from celery_operator.brokerrestarts import BrokerRestart, restart_cause, restarted

pytestmark = pytest.mark.unit


def test_which_run_of_redis_answered_comes_from_info() -> None:
    info = {"run_id": "abc", "uptime_in_seconds": 7, "aof_enabled": 1, "used_memory": 1}
    assert RedisInstance.of_info(info) == RedisInstance("abc", 7, True)
    assert RedisInstance.of_info({"aof_enabled": 0}) is None, "an INFO without run_id tells nothing"


def test_only_a_run_other_than_the_recorded_one_is_a_restart() -> None:
    now = RedisInstance("b", 1, True)
    assert restarted("a", now)
    assert not restarted("b", now)
    assert not restarted(None, now), "the first run seen"
    assert not restarted("a", None), "the broker did not answer"


def pod(name: str, created: str, **container: object) -> dict:
    return {"metadata": {"name": name, "creationTimestamp": created},
            "status": {"phase": "Running", "containerStatuses": [{"name": "redis", **container}]}}


def test_the_cause_is_the_newest_running_pod_restarted_in_place_or_new() -> None:
    old = pod("b-1", "2026-12-07T10:00:00Z", restartCount=2,
              lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137}})
    leaving = {**pod("b-0", "2026-12-07T09:00:00Z"), "metadata": {"name": "b-0", "deletionTimestamp": "x"}}
    assert restart_cause([old, leaving]) == ("redis-server exited in pod b-1 (OOMKilled, exit code 137) and the "
                                              "kubelet restarted it")
    new = pod("b-2", "2026-12-07T11:00:00Z", restartCount=0)
    assert restart_cause([old, new]) == "the broker runs in a new pod, b-2"
    assert restart_cause([]) == "the broker restarted"


def test_the_restart_starts_at_now_minus_uptime() -> None:
    now = datetime.datetime(2026, 12, 7, 12, 0, 30, 500000, tzinfo=datetime.timezone.utc)
    restart = BrokerRestart.of("c", RedisInstance("r", 30, False), None, now, "appendonly no")
    assert restart.status() == {"time": "2026-12-07T12:00:00Z", "cause": "c", "appendOnly": False}
    assert restart.event_type == "Warning" and "its queues could not be read" in restart.message()
