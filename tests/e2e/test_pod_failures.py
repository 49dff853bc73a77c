"""A worker pod that cannot run reaches the user: WorkersReady and Ready name the Deployment and the
kubelet's reason, one Warning Event says so, and both heal when the cause goes."""

from __future__ import annotations

import pytest

from tests.helpers.processes import RedisServer
from tests.helpers.taskqueues import TaskQueues, taskqueue
from tests.helpers.waiting import holds_for, wait_for

pytestmark = pytest.mark.e2e


def _warnings(tqs: TaskQueues, name: str, reason: str) -> list[object]:
    return [e for e in tqs.events(name) if e.type == "Warning" and e.reason == reason]


def test_a_worker_that_cannot_start_is_named_once_and_heals(tqs: TaskQueues, redis_server: RedisServer) -> None:
    env = [{"name": "APP_TOKEN", "valueFrom": {"secretKeyRef": {"name": "pf-settings", "key": "token"}}}]
    tqs.apply(taskqueue("pf", queues=[{"name": "jobs", "replicas": 1}], broker={"url": redis_server.url}, env=env))

    workers = tqs.wait_condition("pf", "WorkersReady", "False", "WorkerPodsFailing", timeout=90)
    assert "Deployment pf-worker-jobs" in workers["message"]
    assert "CreateContainerConfigError" in workers["message"]
    ready = tqs.condition("pf", "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "WorkerPodsFailing", workers["message"])
    wait_for(lambda: _warnings(tqs, "pf", "WorkerPodsFailing"), 15, "the Warning Event")
    holds_for(lambda: len(_warnings(tqs, "pf", "WorkerPodsFailing")) == 1, 3, "one Event for one failure")

    tqs.core.create_namespaced_secret(tqs.namespace, {"metadata": {"name": "pf-settings"},
                                                      "stringData": {"token": "t0ken"}})
    tqs.wait_condition("pf", "Ready", "True", timeout=120)
    assert tqs.condition("pf", "WorkersReady")["reason"] == "WorkersAvailable"
    assert len(_warnings(tqs, "pf", "WorkerPodsFailing")) == 1
