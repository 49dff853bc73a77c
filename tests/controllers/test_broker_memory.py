"""The reconciler against fakes: a Redis broker over its maxmemory (BrokerAcceptingWrites, Ready and
their Events), and Flower's generated login kept once made."""

from __future__ import annotations

import base64

import pytest

from celery_operator.broker.probe import RedisMemory
from tests.controllers.test_converge import SPEC, Cluster

pytestmark = pytest.mark.controllers

URL = "redis://redis.shared:6379/0"
MAX = 200 * 1024 * 1024


def _set(cluster: Cluster, memory: RedisMemory) -> None:
    cluster.runtime.brokers.memory[URL] = memory  # type: ignore[attr-defined]


def _external(memory: RedisMemory | None) -> Cluster:
    cluster = Cluster({**SPEC, "broker": {"url": URL}})
    if memory is not None:
        cluster.runtime.brokers.memory[URL] = memory  # type: ignore[attr-defined]
    cluster.settle()
    return cluster


def _conditions(cluster: Cluster) -> dict[str, dict]:
    return {c["type"]: c for c in cluster.body["status"]["conditions"]}


def test_a_full_broker_is_told_once_with_a_warning_and_its_recovery_too() -> None:
    cluster = _external(RedisMemory(used=MAX // 2, max=MAX, policy="noeviction"))
    writes = _conditions(cluster)["BrokerAcceptingWrites"]
    assert (writes["status"], writes["reason"]) == ("True", "BelowMaxMemory")
    assert cluster.condition("Ready")["status"] == "True"

    events = len(cluster.kube.events)
    _set(cluster, RedisMemory(used=MAX + 1, max=MAX, policy="noeviction"))
    cluster.reconcile()
    full = cluster.condition("BrokerAcceptingWrites")
    assert (full["status"], full["reason"]) == ("False", "BrokerFull")
    assert "maxmemory of 209715200 bytes (200.0Mi)" in full["message"] and "refuses new messages" in full["message"]
    assert cluster.condition("BrokerReady")["status"] == "True", "a full broker still answers"
    assert (cluster.condition("Ready")["status"], cluster.condition("Ready")["reason"]) == ("False", "BrokerFull")
    assert [(kind, reason) for _, kind, reason, _ in cluster.kube.events[events:]] == [("Warning", "BrokerFull")]

    _set(cluster, RedisMemory(used=MAX + 4096, max=MAX, policy="noeviction"))
    assert cluster.reconcile() == [], "still full, with other numbers: nothing written"

    _set(cluster, RedisMemory(used=MAX // 3, max=MAX, policy="noeviction"))
    cluster.reconcile()
    assert cluster.condition("BrokerAcceptingWrites")["status"] == "True"
    assert cluster.condition("Ready")["status"] == "True"
    assert [(kind, reason) for _, kind, reason, _ in cluster.kube.events[events + 1:]] == [("Normal", "Ready")]


def test_an_evicting_broker_over_maxmemory_says_messages_may_be_lost() -> None:
    cluster = _external(RedisMemory(used=MAX + 1, max=MAX, policy="allkeys-lru"))
    assert "may be lost" in cluster.condition("BrokerAcceptingWrites")["message"]


def test_the_condition_stays_as_it_was_while_the_broker_cannot_be_read() -> None:
    cluster = _external(RedisMemory(used=MAX + 1, max=MAX, policy="noeviction"))
    cluster.runtime.brokers.unreachable[URL] = "broker not reachable: ConnectionError"  # type: ignore[attr-defined]
    cluster.reconcile()
    assert cluster.condition("BrokerReady")["reason"] == "BrokerUnreachable"
    assert cluster.condition("BrokerAcceptingWrites")["reason"] == "BrokerFull", "unknown now: not forgotten"


def test_a_redis_without_maxmemory_has_no_such_condition() -> None:
    cluster = _external(RedisMemory(used=MAX, max=0, policy="noeviction"))
    assert "BrokerAcceptingWrites" not in _conditions(cluster)
    _set(cluster, RedisMemory(used=1, max=MAX, policy="noeviction"))
    cluster.reconcile()
    assert "BrokerAcceptingWrites" in _conditions(cluster)
    _set(cluster, RedisMemory(used=1, max=0, policy="noeviction"))
    cluster.reconcile()
    assert "BrokerAcceptingWrites" not in _conditions(cluster), "maxmemory gone: the condition goes"


def _flower_password(cluster: Cluster) -> str:
    secret = cluster.kube.child("Secret", "shop-flower")
    assert secret is not None
    return base64.b64decode(secret["data"]["password"]).decode()


def test_flowers_generated_login_is_made_once_and_kept() -> None:
    cluster = Cluster({**SPEC, "flower": {"enabled": True}})
    cluster.settle()
    password = _flower_password(cluster)
    assert len(password) >= 24
    env = {e["name"]: e for e in cluster.deployment("shop-flower")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"] == {"secretKeyRef": {"name": "shop-flower", "key": "auth"}}
    assert cluster.reconcile() == [], "a settled TaskQueue with Flower costs no write"
    assert _flower_password(cluster) == password, "never rotated silently"


def test_flower_with_the_users_logins_has_no_generated_secret() -> None:
    cluster = Cluster({**SPEC, "flower": {"enabled": True, "basicAuthSecretRef": {"name": "logins", "key": "v"}}})
    cluster.settle()
    assert cluster.kube.child("Secret", "shop-flower") is None
