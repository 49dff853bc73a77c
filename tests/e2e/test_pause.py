"""A paused TaskQueue on real nodes: a spec change and a burst of messages change nothing (no write to
a child, no scale) while the annotation celery-operator.dev/reconcile: paused is on; once it goes,
both take effect."""

from __future__ import annotations

import base64

import celery
import pytest

from tests.helpers.taskqueues import TaskQueues, taskqueue
from tests.helpers.waiting import holds_for, wait_for

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 180
# long enough for four scaler polls (2 s) and eight reconciles (the session's operator resyncs every
# second); the scaler wakes on a queue's first message at once
HELD_SECONDS = 8


def written_children(tqs: TaskQueues) -> dict[str, str]:
    """What a write of the operator to a child changes: a Deployment's generation (its spec and scale),
    any other child's resourceVersion. A Deployment's status, which its controller keeps, is left out."""
    versions = tqs.resource_versions("held")
    del versions["TaskQueue/held"]
    for name in [key for key in versions if key.startswith("Deployment/")]:
        deployment = tqs.apps.read_namespaced_deployment(name.split("/", 1)[1], tqs.namespace)
        versions[name] = f"generation {deployment.metadata.generation}, {deployment.metadata.annotations}"
    return versions


def test_a_paused_taskqueue_takes_neither_a_spec_change_nor_a_burst_until_the_annotation_goes(
        tqs: TaskQueues) -> None:
    tqs.apply(taskqueue("held", broker={"managed": {"persistence": {"enabled": False}}},
                        queues=[{"name": "jobs", "autoscaling": {"minReplicas": 0, "maxReplicas": 1}}]))
    tqs.wait_condition("held", "Ready", "True", timeout=READY_TIMEOUT)
    generation = tqs.get("held")["metadata"]["generation"]
    tqs.cluster.kubectl("annotate", "tq", "held", "-n", tqs.namespace, "celery-operator.dev/reconcile=paused")
    tqs.wait_condition("held", "Paused", "True", "ReconcilePaused", timeout=30)
    before = written_children(tqs)

    tqs.patch_spec("held", {"env": [{"name": "RELEASE", "value": "2"}]})
    secret = tqs.core.read_namespaced_secret("held-broker", tqs.namespace)
    producer = celery.Celery(broker=base64.b64decode(secret.data["url"]).decode())
    for number in range(5):
        producer.send_task("myapp.tasks.record", args=["held-runs", number], queue="jobs")
    producer.close()

    def untouched() -> bool:
        status = tqs.get("held")["status"]
        return written_children(tqs) == before and status["observedGeneration"] == generation
    holds_for(untouched, HELD_SECONDS, "no child written, no scale, the new spec not observed while paused")
    assert tqs.deployment("held-worker-jobs").spec.replicas == 0

    tqs.cluster.kubectl("annotate", "tq", "held", "-n", tqs.namespace, "celery-operator.dev/reconcile-")

    def resumed() -> bool:
        worker = tqs.deployment("held-worker-jobs")
        env = {e.name: e.value for e in worker.spec.template.spec.containers[0].env or []}
        return worker.spec.replicas == 1 and env.get("RELEASE") == "2" and tqs.condition("held", "Paused") is None
    wait_for(resumed, 60, "the spec change and the scale-up once the annotation is gone")
    # the operator posts the Event right after the status write that the wait above saw
    wait_for(lambda: {"ReconcilePaused", "ReconcileResumed"} <= {event.reason for event in tqs.events("held")}, 10,
             "the Events of the pause and the resume")
