"""The scaler's tick (scaler.tick) against fakes of its ports: it scales an autoscaled queue to
its depth, writes nothing when nothing changed, holds replicas while the broker cannot be read,
prices busy pods before a scale-down, and has the broker wake it when a queue's backlog outgrows its
workers before the next poll."""

from __future__ import annotations

from typing import Any

import pytest

from celery_operator import reconcile, scaler
from celery_operator.broker.depth import QueueDepth
from celery_operator.broker.heartbeats import QueueActivity
from tests.controllers.fakes import FakeKube, FakeSession, fake_runtime

pytestmark = pytest.mark.controllers

URL = "redis://redis.shared:6379/0"
SPEC: dict[str, Any] = {
    "image": "acme/shop:1", "app": "myproject", "broker": {"url": URL},
    "autoscaling": {"scaleDownStabilizationSeconds": 0},
    "queues": [{"name": "jobs", "autoscaling": {"maxReplicas": 10, "targetTasksPerReplica": 2}},
               {"name": "fixed", "replicas": 1}],
}


class Scaled:
    """One reconciled TaskQueue, ticked the way its scaler daemon does it."""

    def __init__(self, spec: dict[str, Any] = SPEC):
        self.runtime = fake_runtime()
        self.kube: FakeKube = self.runtime.kube  # type: ignore[assignment]
        body = self.kube.create_taskqueue("shop", spec)
        self.uid = body["metadata"]["uid"]
        reconcile.reconcile_taskqueue(self.runtime, body, [])
        self.kube.roll_out_all()
        self.pods: dict[str, list[scaler.WorkerPod]] = {}

    @property
    def session(self) -> FakeSession:
        return self.runtime.brokers.session(self.uid, URL)  # type: ignore[return-value]

    def tick(self) -> list[tuple[str, str, str]]:
        mark = len(self.kube.writes)
        body = self.kube.body("TaskQueue", "shop")
        scaler.tick(self.runtime, body, self.kube.children_of(self.uid), lambda dns: self.pods.get(dns, []))
        return self.kube.writes_since(mark)

    def replicas(self, queue: str = "jobs") -> int:
        return self.kube.child("Deployment", f"shop-worker-{queue}")["spec"]["replicas"]

    def status(self) -> dict[str, Any]:
        return self.kube.body("TaskQueue", "shop")["status"]

    def queue_status(self, queue: str = "jobs") -> dict[str, Any]:
        return next(q for q in self.status()["queues"] if q["name"] == queue)

    def autoscaling(self) -> dict[str, Any]:
        return next(c for c in self.status()["conditions"] if c["type"] == "Autoscaling")


def test_pending_messages_scale_an_autoscaled_queue_up_and_are_reported() -> None:
    scaled = Scaled()
    assert scaled.replicas() == 0, "minReplicas 0"
    scaled.session.depths["jobs"] = QueueDepth(pending=7, reserved=0)
    scaled.session.depths["fixed"] = QueueDepth(pending=3, reserved=0)
    writes = scaled.tick()
    assert ("scale", "Deployment", "shop-worker-jobs") in writes
    assert scaled.replicas() == 4, "ceil(7 / 2)"
    assert scaled.replicas("fixed") == 1, "a fixed queue is measured, never scaled"
    assert (scaled.queue_status()["pending"], scaled.queue_status()["desiredReplicas"]) == (7, 4)
    assert scaled.queue_status("fixed")["pending"] == 3 and scaled.status()["pending"] == 10
    assert scaled.autoscaling()["status"] == "True"
    [(_, kind, reason, message)] = [e for e in scaled.kube.events if e[2] == "ScaledUp"]
    assert "0 → 4" in message


def test_a_steady_queue_costs_no_write() -> None:
    scaled = Scaled()
    scaled.session.depths["jobs"] = QueueDepth(pending=4)
    scaled.tick()
    for _ in range(3):
        assert scaled.tick() == [], "same depth, same replicas: nothing written"


def test_an_unreadable_broker_holds_replicas_and_is_told_once() -> None:
    scaled = Scaled()
    scaled.session.depths["jobs"] = QueueDepth(pending=6)
    scaled.tick()
    assert scaled.replicas() == 3
    scaled.session.unavailable = "ConnectionError: refused"
    writes = scaled.tick()
    assert ("scale", "Deployment", "shop-worker-jobs") not in writes and scaled.replicas() == 3
    assert (scaled.autoscaling()["status"], scaled.autoscaling()["reason"]) == ("False", "BrokerUnavailable")
    assert scaled.queue_status()["pending"] == 6, "the last figures known, not zeros"
    assert scaled.tick() == []
    warnings = [e for e in scaled.kube.events if e[1] == "Warning"]
    assert [e[2] for e in warnings] == ["BrokerUnavailable"]
    scaled.session.unavailable = None
    scaled.tick()
    assert scaled.kube.events[-1][1:3] == ("Normal", "BrokerAvailable")


def test_a_broker_that_never_answered_is_waited_for_not_an_outage() -> None:
    scaled = Scaled()
    scaled.session.unavailable = "ConnectionError: refused"
    scaled.tick()
    assert (scaled.autoscaling()["status"], scaled.autoscaling()["reason"]) == ("Unknown", "WaitingForBroker")
    assert not [e for e in scaled.kube.events if e[1] == "Warning"]


def test_before_a_scale_down_idle_pods_are_priced_below_busy_ones() -> None:
    scaled = Scaled()
    scaled.session.depths["jobs"] = QueueDepth(pending=6)
    scaled.tick()
    pods = [scaler.WorkerPod(name=f"shop-worker-jobs-{n}", annotations={}) for n in ("a", "b", "c")]
    scaled.pods["jobs"] = pods
    scaled.kube.pods = [{"metadata": {"name": pod.name, "namespace": "ns"}} for pod in pods]
    scaled.session.depths["jobs"] = QueueDepth(pending=0)
    scaled.session.activities["jobs"] = QueueActivity(in_flight=1, busy_pods=frozenset({"shop-worker-jobs-b"}),
                                                      workers=3)
    scaled.tick()
    assert scaled.replicas() == 1, "down to the one busy worker"
    costs = {pod["metadata"]["name"]: pod["metadata"]["annotations"][scaler.DELETION_COST] for pod in scaled.kube.pods}
    assert costs == {"shop-worker-jobs-a": "-1000", "shop-worker-jobs-b": "1000", "shop-worker-jobs-c": "-1000"}
    writes = scaled.kube.writes
    scale_down = max(i for i, write in enumerate(writes) if write == ("scale", "Deployment", "shop-worker-jobs"))
    assert all(i < scale_down for i, write in enumerate(writes) if write[0] == "annotate"), "priced before the scale"


def test_the_broker_wakes_the_scaler_when_a_queue_outgrows_its_workers_and_not_at_max() -> None:
    scaled = Scaled()
    scaled.tick()
    assert scaled.session.watched[scaled.uid] == {"jobs": 1}, "at zero: its first message; a fixed queue never"
    scaled.session.depths["jobs"] = QueueDepth(pending=3)
    scaled.tick()
    assert scaled.replicas() == 2
    assert scaled.session.watched[scaled.uid] == {"jobs": 2}, "2 replicas take 4 tasks: the 5th calls for a 3rd"
    scaled.session.unavailable = "connection refused"
    scaled.tick()
    assert scaled.session.watched[scaled.uid] == {}, "a broker that cannot be read: replicas held, nothing to count"
    scaled.session.unavailable = None
    scaled.session.depths["jobs"] = QueueDepth(pending=40)
    scaled.tick()
    assert scaled.replicas() == 10
    assert scaled.session.watched[scaled.uid] == {}, "at maxReplicas no backlog scales it further"


def test_a_queue_whose_workers_heartbeats_are_not_heard_yet_is_ticked_again_soon() -> None:
    """The heartbeat monitor answers only after its warm-up: until then the busy queue is neither
    scaled nor watched for arrivals, and the daemon comes back within a second, not a poll later."""
    scaled = Scaled()
    scaled.session.depths["jobs"] = QueueDepth(pending=1)
    scaled.tick()
    scaled.pods["jobs"] = [scaler.WorkerPod(name="shop-worker-jobs-a", running_since=1.0)]
    scaled.session.heartbeats_unavailable = "warming up"
    body = scaled.kube.body("TaskQueue", "shop")
    children = scaled.kube.children_of(scaled.uid)
    assert scaler.tick(scaled.runtime, body, children, lambda dns: scaled.pods.get(dns, [])) is False
    assert scaled.session.watched[scaled.uid] == {}
    scaled.session.heartbeats_unavailable = None
    assert scaler.tick(scaled.runtime, body, children, lambda dns: scaled.pods.get(dns, [])) is True
    assert scaled.session.watched[scaled.uid] == {"jobs": 2}, "1 replica takes 2 tasks, 1 waits: the 3rd calls for more"


def test_an_unreconciled_taskqueue_is_ticked_again_soon() -> None:
    runtime = fake_runtime()
    body = runtime.kube.create_taskqueue("shop", SPEC)  # type: ignore[attr-defined]
    assert scaler.tick(runtime, body, [], lambda dns: []) is False
