"""Worker health in the scaler's tick (scaler.check_workers and the scale-down re-check) against
fakes of its ports: the readiness gate lands on the pod and settles, a stuck worker is deleted (or
only reported) with one Warning, a restarted container is reported with its reason and the tasks it
was running, and a scale-down waits for a worker that says it is busy, never for one that never came
online."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest
from prometheus_client import REGISTRY

from celery_operator import naming, reconcile, scaler
from celery_operator.broker.depth import QueueDepth
from celery_operator.broker.heartbeats import WorkerState
from celery_operator.workerhealth import WorkerPod, worker_pod
from tests.controllers.fakes import FakeKube, FakeSession, fake_runtime

pytestmark = pytest.mark.controllers

URL = "redis://redis.shared:6379/0"
T0 = 1_800_000_000.0  # epoch second a pod's worker container started
POD = "shop-worker-jobs-6d8f-a"
OTHER = "shop-worker-jobs-6d8f-b"


def spec(health: dict[str, Any] | None = None, autoscaled: bool = False) -> dict[str, Any]:
    queue: dict[str, Any] = {"name": "jobs"}
    if autoscaled:
        queue["autoscaling"] = {"maxReplicas": 10, "targetTasksPerReplica": 2}
    else:
        queue["replicas"] = 1
    body: dict[str, Any] = {"image": "acme/shop:1", "app": "myproject", "broker": {"url": URL},
                            "autoscaling": {"scaleDownStabilizationSeconds": 0}, "queues": [queue]}
    if health is not None:
        body["workers"] = {"health": health}
    return body


def rfc3339(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_manifest(name: str, started: float = T0) -> dict[str, Any]:
    """A running worker pod as the API server holds it (the gate not set yet)."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                     "labels": {naming.LABEL_INSTANCE: "shop", naming.LABEL_QUEUE: "jobs"}},
        "spec": {"readinessGates": [{"conditionType": naming.CONDITION_CONSUMING}]},
        "status": {"phase": "Running",
                   "conditions": [{"type": "Ready", "status": "False"}],
                   "containerStatuses": [{"name": naming.WORKER_CONTAINER, "ready": True, "restartCount": 0,
                                          "state": {"running": {"startedAt": rfc3339(started)}},
                                          "lastState": {}}]},
    }


class Workers:
    """One reconciled TaskQueue ticked like its scaler daemon does it; the worker pods live in
    FakeKube.pods (where gate writes and deletes land) and the scaler sees them as the operator's
    pod index does, through workerhealth.worker_pod."""

    def __init__(self, body_spec: dict[str, Any]):
        self.runtime = fake_runtime()
        self.kube: FakeKube = self.runtime.kube  # type: ignore[assignment]
        body = self.kube.create_taskqueue("shop", body_spec)
        self.uid = body["metadata"]["uid"]
        reconcile.reconcile_taskqueue(self.runtime, body, [])
        self.kube.roll_out_all()

    @property
    def session(self) -> FakeSession:
        return self.runtime.brokers.session(self.uid, URL)  # type: ignore[return-value]

    def add_pod(self, name: str, started: float = T0) -> None:
        self.kube.pods.append(pod_manifest(name, started))

    def manifest(self, name: str) -> dict[str, Any]:
        [found] = [p for p in self.kube.pods if p["metadata"]["name"] == name]
        return found

    def worker_pods(self, dns: str) -> list[WorkerPod]:
        return [worker_pod(copy.deepcopy(p), naming.WORKER_CONTAINER) for p in self.kube.pods
                if p["metadata"]["labels"][naming.LABEL_QUEUE] == dns]

    def heartbeat(self, name: str, active: int = 0, processed: int = 0, age: float = 1.0,
                  sent: float = T0 + 3) -> None:
        """Set the pod's latest heartbeat as the monitor reports it (replacing any before)."""
        state = WorkerState(hostname=f"jobs@{name}", queue="jobs", pod=name, active=active, processed=processed,
                            freq=2.0, timestamp=sent, age=age, silent=age > 5.0)
        beats = [b for b in self.session.heartbeats.get("jobs", []) if b.pod != name]
        self.session.heartbeats["jobs"] = [*beats, state]

    def tick(self) -> list[tuple[str, str, str]]:
        mark = len(self.kube.writes)
        body = self.kube.body("TaskQueue", "shop")
        scaler.tick(self.runtime, body, self.kube.children_of(self.uid), self.worker_pods)
        return self.kube.writes_since(mark)

    def gate(self, name: str) -> dict[str, Any] | None:
        conditions = self.manifest(name)["status"].get("conditions") or []
        return next((c for c in conditions if c["type"] == naming.CONDITION_CONSUMING), None)

    def warnings(self, reason: str) -> list[tuple[str, str, str, str]]:
        return [e for e in self.kube.events if e[1] == "Warning" and e[2] == reason]

    def queue_status(self) -> dict[str, Any]:
        return next(q for q in self.kube.body("TaskQueue", "shop")["status"]["queues"] if q["name"] == "jobs")

    def replicas(self) -> int:
        return self.kube.child("Deployment", "shop-worker-jobs")["spec"]["replicas"]


def stuck_count(evidence: str) -> float:
    return REGISTRY.get_sample_value("celery_operator_stuck_workers_total", {
        "namespace": "ns", "taskqueue": "shop", "queue": "jobs", "evidence": evidence}) or 0.0


def test_a_heartbeating_worker_gets_its_gate_and_a_settled_pod_costs_no_write() -> None:
    workers = Workers(spec())
    workers.add_pod(POD)
    workers.heartbeat(POD, active=1, processed=4)
    writes = workers.tick()
    assert ("condition", "Pod", POD) in writes
    gate = workers.gate(POD)
    assert gate is not None and (gate["status"], gate["reason"]) == ("True", "Consuming")
    assert gate["lastTransitionTime"]
    assert workers.tick() == [], "gate already True, same figures: nothing written"
    workers.heartbeat(POD, active=2, processed=9)
    assert workers.tick() == [], "new figures of a consuming worker are no reason to touch its gate"


def test_a_worker_silent_beyond_the_timeout_is_deleted_with_one_warning() -> None:
    workers = Workers(spec({"heartbeatTimeoutSeconds": 30}))
    workers.add_pod(POD)
    workers.heartbeat(POD)
    workers.tick()
    before = stuck_count("heartbeats-stopped")
    workers.heartbeat(POD, age=29.0)
    workers.tick()
    assert workers.warnings("WorkerStuck") == [] and POD in [p["metadata"]["name"] for p in workers.kube.pods]
    assert (workers.gate(POD)["status"], workers.gate(POD)["reason"]) == ("False", "HeartbeatsStopped")
    workers.heartbeat(POD, age=31.0)
    writes = workers.tick()
    assert ("delete", "Pod", POD) in writes
    assert [p["metadata"]["name"] for p in workers.kube.pods] == []
    [(involved, _, _, message)] = workers.warnings("WorkerStuck")
    assert involved == "shop", "posted on the TaskQueue"
    assert f"pod {POD}" in message and f"no heartbeat from jobs@{POD} for 31s" in message
    assert "threshold 30s" in message and "deleting it" in message
    assert stuck_count("heartbeats-stopped") == before + 1
    workers.tick()
    assert len(workers.warnings("WorkerStuck")) == 1


def test_with_action_report_a_stuck_worker_is_reported_once_and_kept() -> None:
    workers = Workers(spec({"action": "Report"}))
    workers.add_pod(POD)
    workers.heartbeat(POD)
    workers.tick()
    workers.heartbeat(POD, age=31.0)
    writes = workers.tick()
    assert not [w for w in writes if w[0] == "delete"]
    [(_, _, _, message)] = workers.warnings("WorkerStuck")
    assert f"pod {POD}" in message and "no heartbeat" in message and "reported only" in message
    for age in (33.0, 35.0, 60.0):
        workers.heartbeat(POD, age=age)
        assert workers.tick() == [], "reported already, gate already False: nothing written"
    assert len(workers.warnings("WorkerStuck")) == 1
    assert POD in [p["metadata"]["name"] for p in workers.kube.pods]
    assert workers.gate(POD)["status"] == "False"


def test_a_restarted_container_is_reported_with_its_reason_and_the_tasks_it_was_running() -> None:
    workers = Workers(spec())
    workers.add_pod(POD)
    workers.heartbeat(POD, active=2, processed=5)
    workers.tick()
    assert workers.queue_status()["restarts"] == 0 and "lastRestart" not in workers.queue_status()
    assert workers.warnings("WorkerRestarted") == []
    # the kubelet restarted the OOM-killed container; the monitor still holds the old run's heartbeat
    status = workers.manifest(POD)["status"]["containerStatuses"][0]
    status.update(restartCount=1, state={"running": {"startedAt": rfc3339(T0 + 60)}},
                  lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                            "startedAt": rfc3339(T0), "finishedAt": rfc3339(T0 + 58)}})
    workers.heartbeat(POD, active=2, processed=5, age=9.0)
    workers.tick()
    [(involved, _, _, message)] = workers.warnings("WorkerRestarted")
    assert involved == "shop"
    assert POD in message and "OOMKilled" in message and "exit code 137" in message
    assert "2 task(s) in flight" in message
    queue = workers.queue_status()
    assert queue["restarts"] == 1
    assert queue["lastRestart"] == {"pod": POD, "reason": "OOMKilled", "exitCode": 137, "inFlight": 2,
                                    "time": rfc3339(T0 + 58)}
    assert (workers.gate(POD)["status"], workers.gate(POD)["reason"]) == ("False", "WorkerOffline")
    workers.tick()
    assert len(workers.warnings("WorkerRestarted")) == 1, "one Event per restart"
    workers.heartbeat(POD, sent=T0 + 61)  # the new run came online
    workers.tick()
    assert workers.gate(POD)["status"] == "True"
    assert workers.queue_status()["lastRestart"]["reason"] == "OOMKilled", "kept after the worker recovered"


def autoscaled_with(replicas: int) -> Workers:
    workers = Workers(spec(autoscaled=True))
    workers.session.depths["jobs"] = QueueDepth(pending=2 * replicas)
    workers.tick()
    assert workers.replicas() == replicas
    return workers


def test_a_scale_down_waits_for_a_worker_that_says_it_is_busy() -> None:
    workers = autoscaled_with(1)
    workers.add_pod(POD)
    workers.heartbeat(POD, active=0, processed=3)  # its heartbeat says idle
    workers.session.depths["jobs"] = QueueDepth(pending=0)
    workers.session.busy = {f"jobs@{POD}"}  # asked, it says it has just taken a task
    writes = workers.tick()
    assert not [w for w in writes if w[0] == "scale"] and workers.replicas() == 1
    workers.session.busy = set()
    workers.tick()
    assert workers.replicas() == 0, "once it says it is idle, the scale-down goes ahead"


def test_a_pod_that_never_heartbeated_is_not_asked_and_does_not_hold_a_scale_down() -> None:
    workers = autoscaled_with(2)
    workers.add_pod(POD)
    workers.heartbeat(POD, active=0, processed=3)
    workers.add_pod(OTHER)  # its worker never came online (say, crash-looping at start)
    workers.session.depths["jobs"] = QueueDepth(pending=0)
    workers.session.busy = {f"jobs@{OTHER}"}  # would count as busy if it were asked
    workers.tick()
    assert workers.replicas() == 0
    assert workers.gate(OTHER) is None, "no heartbeat, no verdict on its gate"
