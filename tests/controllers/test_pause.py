"""A paused TaskQueue (annotation celery-operator.dev/reconcile: paused): neither the reconciler nor
the scaler writes to it or its children, but for the Paused condition and its Events, until the
annotation goes; then the spec changed meanwhile and the queue's depth both take effect."""

from __future__ import annotations

from typing import Any

import pytest

from celery_operator import reconcile, scaler
from celery_operator.broker.depth import QueueDepth
from tests.controllers.fakes import FakeKube, FakeSession, fake_runtime

pytestmark = pytest.mark.controllers

URL = "redis://redis.shared:6379/0"
SPEC: dict[str, Any] = {
    "image": "acme/shop:1", "app": "myproject", "broker": {"url": URL},
    "autoscaling": {"scaleDownStabilizationSeconds": 0},
    "queues": [{"name": "jobs", "autoscaling": {"maxReplicas": 10, "targetTasksPerReplica": 2}}],
}


class Shop:
    def __init__(self) -> None:
        self.runtime = fake_runtime()
        self.kube: FakeKube = self.runtime.kube  # type: ignore[assignment]
        self.uid = self.kube.create_taskqueue("shop", SPEC)["metadata"]["uid"]
        self.reconcile()
        self.kube.roll_out_all()
        self.reconcile()

    @property
    def body(self) -> dict[str, Any]:
        return self.kube.body("TaskQueue", "shop")

    def annotate(self, value: str | None) -> None:
        metadata = self.kube.objects[("TaskQueue", "ns", "shop")].body["metadata"]
        annotations = metadata.setdefault("annotations", {})
        if value is None:
            annotations.pop("celery-operator.dev/reconcile", None)
        else:
            annotations["celery-operator.dev/reconcile"] = value

    def reconcile(self) -> list[tuple[str, str, str]]:
        mark = len(self.kube.writes)
        reconcile.reconcile_taskqueue(self.runtime, self.body, self.kube.children_of(self.uid))
        return self.kube.writes_since(mark)

    def tick(self) -> list[tuple[str, str, str]]:
        mark = len(self.kube.writes)
        scaler.tick(self.runtime, self.body, self.kube.children_of(self.uid), lambda dns: [])
        return self.kube.writes_since(mark)

    @property
    def session(self) -> FakeSession:
        return self.runtime.brokers.session(self.uid, URL)  # type: ignore[return-value]

    def condition(self, condition_type: str) -> dict[str, Any] | None:
        return next((c for c in self.body["status"]["conditions"] if c["type"] == condition_type), None)

    def worker(self) -> dict[str, Any]:
        return self.kube.child("Deployment", "shop-worker-jobs")

    def reasons(self) -> list[tuple[str, str]]:
        return [(kind, reason) for _, kind, reason, _ in self.kube.events]


def concurrency(worker: dict[str, Any]) -> str:
    command = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    return command[command.index("--concurrency") + 1]


def test_a_paused_taskqueue_takes_neither_a_spec_change_nor_a_burst_until_resumed() -> None:
    shop = Shop()
    generation = shop.body["status"]["observedGeneration"]
    shop.annotate("paused")
    assert shop.reconcile() == [("status", "TaskQueue", "shop")], "only the Paused condition"
    paused = shop.condition("Paused")
    assert (paused["status"], paused["reason"]) == ("True", "ReconcilePaused")
    assert shop.reasons()[-1] == ("Normal", "ReconcilePaused")

    shop.kube.edit_spec("TaskQueue", "shop", {**SPEC, "workers": {"concurrency": 7}})
    shop.session.depths["jobs"] = QueueDepth(pending=9, reserved=0)
    assert shop.reconcile() == [("status", "TaskQueue", "shop")], "the Paused condition of the new generation"
    assert shop.condition("Paused")["observedGeneration"] == shop.body["metadata"]["generation"]
    for _ in range(3):
        assert shop.reconcile() == [] and shop.tick() == [], "no write to the TaskQueue or a child while paused"
    assert shop.body["status"]["observedGeneration"] == generation, "the new spec is not acted on"
    assert concurrency(shop.worker()) == "2", "the worker Deployment as it was"
    assert shop.worker()["spec"]["replicas"] == 0

    shop.annotate(None)
    writes = shop.reconcile()
    assert ("apply", "Deployment", "shop-worker-jobs") in writes and concurrency(shop.worker()) == "7"
    assert shop.condition("Paused") is None
    assert shop.body["status"]["observedGeneration"] == shop.body["metadata"]["generation"]
    assert ("Normal", "ReconcileResumed") in shop.reasons()
    assert ("scale", "Deployment", "shop-worker-jobs") in shop.tick()
    assert shop.worker()["spec"]["replicas"] == 5, "ceil(9 / 2)"


def test_an_annotation_value_the_operator_does_not_know_pauses_nothing_and_says_so() -> None:
    shop = Shop()
    shop.annotate("disabled")
    shop.kube.edit_spec("TaskQueue", "shop", {**SPEC, "workers": {"concurrency": 7}})
    assert ("apply", "Deployment", "shop-worker-jobs") in shop.reconcile()
    paused = shop.condition("Paused")
    assert (paused["status"], paused["reason"]) == ("False", "InvalidAnnotation")
    assert "'disabled'" in paused["message"] and "'paused'" in paused["message"]
    assert ("Warning", "InvalidAnnotation") in shop.reasons()


def test_a_resume_onto_a_bad_spec_tells_both_the_resume_and_the_error() -> None:
    shop = Shop()
    shop.annotate("paused")
    shop.reconcile()
    shop.kube.edit_spec("TaskQueue", "shop", {**SPEC, "workers": {"concurrency": 0}})
    shop.annotate(None)
    shop.reconcile()
    assert shop.reasons()[-2:] == [("Warning", "InvalidSpec"), ("Normal", "ReconcileResumed")]
