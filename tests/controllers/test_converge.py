"""The TaskQueue reconciler (reconcile.reconcile_taskqueue) against fakes of its ports: what it
creates, that a settled TaskQueue costs no write, that a removal reaches exactly the children built
from it, what it refuses to touch, and what its status and Events say."""

from __future__ import annotations

import copy
import datetime
from typing import Any

import pytest

import celery_operator
from celery_operator import reconcile
from celery_operator.kube import KubeError
from tests.controllers.fakes import FakeKube, fake_runtime
from tests.helpers.specs import every_removable_field

pytestmark = pytest.mark.controllers

SPEC: dict[str, Any] = {
    "image": "acme/shop:1", "app": "myproject",
    "env": [{"name": "FOO", "value": "1"}, {"name": "KEEP", "value": "2"}],
    "pod": {"labels": {"team": "blue"}},
    "queues": [{"name": "fast", "replicas": 1}, {"name": "slow", "replicas": 2, "concurrency": 8}],
}
WORKERS = {"shop-worker-fast", "shop-worker-slow"}


class Cluster:
    """One TaskQueue in a fake API server, reconciled the way the handlers do it."""

    def __init__(self, spec: dict[str, Any] = SPEC, **settings: Any):
        self.runtime = fake_runtime(**settings)
        self.kube: FakeKube = self.runtime.kube  # type: ignore[assignment]
        self.body = self.kube.create_taskqueue("shop", spec)

    @property
    def uid(self) -> str:
        return self.body["metadata"]["uid"]

    def reconcile(self, referring: list[dict[str, Any]] | None = None,
                  now: datetime.datetime | None = None) -> list[tuple[str, str, str]]:
        """One pass; the writes it made."""
        mark = len(self.kube.writes)
        self.body = self.kube.body("TaskQueue", "shop")
        reconcile.reconcile_taskqueue(self.runtime, self.body, self.kube.children_of(self.uid), referring or [],
                                      now=now)
        self.body = self.kube.body("TaskQueue", "shop")
        return self.kube.writes_since(mark)

    def edit(self, spec: dict[str, Any]) -> None:
        self.body = self.kube.edit_spec("TaskQueue", "shop", spec)

    def settle(self) -> None:
        """Reconcile until the Deployments have rolled out and the status says so."""
        self.reconcile()
        self.kube.roll_out_all()
        self.reconcile()

    def condition(self, condition_type: str) -> dict[str, Any]:
        return next(c for c in self.body["status"]["conditions"] if c["type"] == condition_type)

    def deployment(self, name: str) -> dict[str, Any]:
        found = self.kube.child("Deployment", name)
        assert found is not None, f"Deployment {name} does not exist"
        return found


def _of_children(writes: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """The writes to children, not to the TaskQueue's own status."""
    return [write for write in writes if write[1] != "TaskQueue"]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_a_new_taskqueue_gets_its_children_and_a_status_that_says_it_is_starting() -> None:
    cluster = Cluster()
    writes = cluster.reconcile()
    applied = {(kind, name) for verb, kind, name in writes if verb == "apply"}
    assert applied == {("Secret", "shop-broker"), ("Deployment", "shop-broker"), ("Service", "shop-broker"),
                       ("PersistentVolumeClaim", "shop-broker"), ("Deployment", "shop-worker-fast"), ("Deployment", "shop-worker-slow"),
                       ("NetworkPolicy", "shop-broker"), ("NetworkPolicy", "shop-workers")}
    assert cluster.condition("BrokerReady")["reason"] == "BrokerStarting"
    assert cluster.condition("Ready")["status"] == "False"
    assert [(kind, reason) for _, kind, reason, _ in cluster.kube.events] == [("Normal", "BrokerStarting")]
    assert cluster.body["status"]["brokerSecretName"] == "shop-broker"
    assert cluster.body["status"]["operatorVersion"] == celery_operator.__version__, "which release reconciled it"


def test_a_broker_claim_that_cannot_bind_says_why_in_broker_ready_with_one_warning() -> None:
    cluster = Cluster()
    cluster.reconcile()
    cluster.kube.record_event("PersistentVolumeClaim", "shop-broker", "Normal", "WaitForFirstConsumer",
                              "waiting for first consumer to be created before binding")
    cluster.reconcile()
    assert cluster.condition("BrokerReady")["reason"] == "BrokerStarting", "waiting to bind is progress"
    cluster.kube.record_event("PersistentVolumeClaim", "shop-broker", "Warning", "ProvisioningFailed",
                              'storageclass.storage.k8s.io "fast" not found')
    for _ in range(3):
        cluster.reconcile()
    broker = cluster.condition("BrokerReady")
    assert (broker["status"], broker["reason"]) == ("False", "BrokerVolumePending")
    assert "PersistentVolumeClaim shop-broker cannot bind" in broker["message"]
    assert 'storageclass.storage.k8s.io "fast" not found' in broker["message"]
    assert "spec.broker.managed.persistence" in broker["message"]
    warnings = [reason for _, kind, reason, _ in cluster.kube.events if kind == "Warning"]
    assert warnings == ["BrokerVolumePending"], "one Event for the state, not one per pass"
    cluster.kube.bind_claim("shop-broker")
    cluster.kube.roll_out_all()
    cluster.reconcile()
    assert cluster.condition("BrokerReady")["status"] == "True"


def test_a_settled_taskqueue_costs_no_write() -> None:
    cluster = Cluster()
    cluster.settle()
    assert cluster.condition("Ready")["status"] == "True"
    events = list(cluster.kube.events)
    for _ in range(3):
        assert cluster.reconcile() == [], "nothing changed: nothing written"
    assert cluster.kube.events == events, "no Event without a change"


def test_removing_an_env_var_and_the_pod_labels_reaches_every_worker_and_nothing_else() -> None:
    cluster = Cluster()
    cluster.settle()
    edited = copy.deepcopy(SPEC)
    edited["env"] = [{"name": "KEEP", "value": "2"}]
    del edited["pod"]
    cluster.edit(edited)
    writes = cluster.reconcile()
    assert {name for verb, kind, name in writes if verb == "apply"} == WORKERS
    for name in WORKERS:
        deployment = cluster.deployment(name)
        assert [e["name"] for e in _container(deployment)["env"]] == ["KEEP", "CELERY_BROKER_URL"]
        assert "team" not in deployment["spec"]["template"]["metadata"]["labels"]
    cluster.kube.roll_out_all()
    cluster.reconcile()
    assert cluster.reconcile() == [], "settled again"


FULL: dict[str, Any] = {**SPEC, **every_removable_field()}
POD_TEMPLATE_USERS = WORKERS | {"shop-flower", "shop-beat"}


@pytest.mark.parametrize(("removed", "reached"), [
    ("envFrom", WORKERS | {"shop-beat"}),
    ("serviceAccountName", POD_TEMPLATE_USERS),
    ("pod.tolerations", POD_TEMPLATE_USERS),
    ("pod.affinity", POD_TEMPLATE_USERS),
    ("beat.resources", {"shop-beat"}),
    ("workers.resources", WORKERS),
    ("workers.extraArgs", WORKERS),
    ("broker.managed.resources", {"shop-broker"}),
    ("flower.resources", {"shop-flower"}),
    ("flower.env", {"shop-flower"}),
    ("flower.extraArgs", {"shop-flower"}),
    ("broker.managed.maxMemory", {"shop-broker"}),
])
def test_a_removal_reaches_exactly_the_deployments_built_from_it(removed: str, reached: set[str]) -> None:
    cluster = Cluster(FULL)
    cluster.settle()
    before = {name: cluster.deployment(name)["spec"] for name in reached}
    edited = copy.deepcopy(FULL)
    *parents, last = removed.split(".")
    node = edited
    for part in parents:
        node = node[part]
    del node[last]
    cluster.edit(edited)
    assert {name for verb, _, name in cluster.reconcile() if verb == "apply"} == reached
    for name in reached:
        assert cluster.deployment(name)["spec"] != before[name], f"{removed} is still in {name}"
    cluster.kube.roll_out_all()
    cluster.reconcile()
    assert cluster.reconcile() == [], "settled again"


def test_removing_a_queues_overrides_reaches_only_its_worker() -> None:
    cluster = Cluster()
    cluster.settle()
    edited = copy.deepcopy(SPEC)
    edited["queues"][1] = {"name": "slow", "replicas": 2}
    cluster.edit(edited)
    assert {name for verb, _, name in cluster.reconcile() if verb == "apply"} == {"shop-worker-slow"}
    command = _container(cluster.deployment("shop-worker-slow"))["command"]
    assert command[command.index("--concurrency") + 1] == "2"


def test_turning_flower_off_deletes_its_children_only() -> None:
    cluster = Cluster({**SPEC, "flower": {"enabled": True}})
    cluster.settle()
    assert cluster.kube.child("Deployment", "shop-flower")["spec"]["template"]["spec"]["containers"][0][
        "image"] == "mher/flower:2.0", "the operator's default image"
    cluster.edit({**SPEC, "flower": {"enabled": False}})
    writes = cluster.reconcile()
    assert sorted(_of_children(writes)) == [("delete", "Deployment", "shop-flower"),
                                            ("delete", "NetworkPolicy", "shop-flower"),
                                            ("delete", "Secret", "shop-flower"),
                                            ("delete", "Service", "shop-flower")]


def test_turning_network_policies_off_deletes_them_only() -> None:
    cluster = Cluster()
    cluster.settle()
    cluster.edit({**SPEC, "networkPolicy": {"enabled": False}})
    writes = cluster.reconcile()
    assert sorted(_of_children(writes)) == [("delete", "NetworkPolicy", "shop-broker"),
                                            ("delete", "NetworkPolicy", "shop-workers")]
    assert cluster.reconcile() == [], "and then nothing more"


def test_an_edit_of_a_field_the_operator_sets_is_reverted() -> None:
    cluster = Cluster()
    cluster.settle()
    cluster.kube.objects[("Deployment", "ns", "shop-worker-fast")].body["spec"]["template"]["spec"]["containers"][0][
        "image"] = "evil:1"
    assert _of_children(cluster.reconcile()) == [("apply", "Deployment", "shop-worker-fast")]
    assert _container(cluster.deployment("shop-worker-fast"))["image"] == "acme/shop:1"


def test_an_object_of_a_childs_name_that_is_not_ours_is_never_touched() -> None:
    cluster = Cluster()
    foreign = {"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "shop-worker-fast", "namespace": "ns"}, "spec": {"replicas": 0}}
    cluster.kube.add_foreign(foreign)
    writes = cluster.reconcile()
    assert writes == [("status", "TaskQueue", "shop")], "a blocked pass touches no child"
    assert (cluster.condition("Ready")["status"], cluster.condition("Ready")["reason"]) == ("False", "NameConflict")
    assert cluster.kube.events[-1][1:3] == ("Warning", "NameConflict")
    assert cluster.kube.child("Deployment", "shop-worker-fast")["spec"] == {"replicas": 0}


def test_an_autoscaled_queue_starts_at_min_replicas_with_replicas_owned_by_the_scaler() -> None:
    spec = {**SPEC, "queues": [{"name": "fast", "autoscaling": {"minReplicas": 1, "maxReplicas": 5}}]}
    cluster = Cluster(spec)
    writes = cluster.reconcile()
    assert ("scale", "Deployment", "shop-worker-fast") in writes
    deployment = cluster.deployment("shop-worker-fast")
    assert deployment["spec"]["replicas"] == 1
    cluster.kube.scale("ns", "shop-worker-fast", 4, cluster.runtime.settings.scaler_field_manager)
    cluster.kube.roll_out_all()
    cluster.reconcile()
    assert cluster.reconcile() == [], "the reconciler leaves the scaler's replicas alone"
    assert cluster.deployment("shop-worker-fast")["spec"]["replicas"] == 4


def _pod(deployment: str, labels: dict[str, str], **container_status: Any) -> dict[str, Any]:
    return {"metadata": {"name": f"{deployment}-x1", "namespace": "ns", "labels": labels},
            "status": {"containerStatuses": [{"name": "worker", "image": "acme/shop:1", "ready": False,
                                              **container_status}]}}


def test_a_worker_pod_that_cannot_pull_its_image_is_named_once_and_heals() -> None:
    cluster = Cluster()
    cluster.settle()
    cluster.edit({**SPEC, "image": "acme/shop:missing"})
    cluster.reconcile()  # the new template is not rolled out
    labels = cluster.deployment("shop-worker-fast")["spec"]["template"]["metadata"]["labels"]
    cluster.kube.pods = [_pod("shop-worker-fast", labels, image="acme/shop:missing",
                              state={"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling"}})]
    cluster.kube.roll_out("shop-worker-slow")
    events_before = len(cluster.kube.events)
    cluster.reconcile()
    workers = cluster.condition("WorkersReady")
    assert (workers["status"], workers["reason"]) == ("False", "WorkerPodsFailing")
    assert "Deployment shop-worker-fast" in workers["message"] and "ImagePullBackOff" in workers["message"]
    assert "acme/shop:missing" in workers["message"]
    assert (cluster.condition("Ready")["reason"], cluster.condition("Ready")["message"]) == (
        "WorkerPodsFailing", workers["message"])
    new_events = cluster.kube.events[events_before:]
    assert [(kind, reason) for _, kind, reason, _ in new_events] == [("Warning", "WorkerPodsFailing")]
    assert cluster.reconcile() == [], "the same failure is not written or told twice"

    cluster.edit(SPEC)
    cluster.reconcile()
    cluster.kube.pods = []
    cluster.kube.roll_out_all()
    cluster.reconcile()
    assert cluster.condition("Ready")["status"] == "True"
    assert cluster.kube.events[-1][1:3] == ("Normal", "Ready")


def test_a_rollout_that_keeps_its_replicas_available_keeps_workers_ready() -> None:
    """WorkersReady means every worker Deployment has its desired replicas available. A new template
    (an env edit) rolls out surge-first: the old pod serves until the new one consumes, so the
    condition neither flaps nor tells a Warning; a Deployment short of replicas is not ready."""
    cluster = Cluster()
    cluster.settle()
    assert cluster.condition("WorkersReady")["status"] == "True"
    events_before = len(cluster.kube.events)

    cluster.edit({**SPEC, "env": [{"name": "FOO", "value": "2"}]})
    cluster.reconcile()  # the apply's answer: a new generation the Deployment controller has not observed yet
    fast = cluster.deployment("shop-worker-fast")
    assert fast["status"]["observedGeneration"] < fast["metadata"]["generation"]
    assert cluster.condition("WorkersReady")["status"] == "True", "the old pods still serve"

    fast["status"].update(observedGeneration=fast["metadata"]["generation"], replicas=2, updatedReplicas=1,
                          readyReplicas=1, availableReplicas=1)  # the new pod runs, does not consume yet
    cluster.kube.objects[("Deployment", "ns", "shop-worker-fast")].body["status"] = fast["status"]
    assert cluster.reconcile() == []
    assert cluster.condition("WorkersReady")["status"] == "True"
    assert cluster.kube.events[events_before:] == []

    cluster.edit({**SPEC, "env": [{"name": "FOO", "value": "2"}],
                  "queues": [{"name": "fast", "replicas": 3}, SPEC["queues"][1]]})
    cluster.reconcile()
    workers = cluster.condition("WorkersReady")
    assert (workers["status"], workers["reason"]) == ("False", "WorkersNotReady")
    assert "shop-worker-fast (1/3 ready)" in workers["message"]


def test_a_crash_looping_broker_is_told_in_broker_ready() -> None:
    cluster = Cluster()
    cluster.reconcile()
    labels = cluster.deployment("shop-broker")["spec"]["template"]["metadata"]["labels"]
    cluster.kube.pods = [_pod("shop-broker", labels, state={"waiting": {"reason": "CrashLoopBackOff"}},
                              lastState={"terminated": {"reason": "OOMKilled", "exitCode": 137}})]
    cluster.reconcile()
    broker = cluster.condition("BrokerReady")
    assert (broker["reason"], cluster.condition("Ready")["reason"]) == ("BrokerPodFailing", "BrokerPodFailing")
    assert "Deployment shop-broker" in broker["message"] and "OOMKilled" in broker["message"]
    assert cluster.kube.events[-1][1:3] == ("Warning", "BrokerPodFailing")


def test_a_settled_taskqueue_reads_no_pods() -> None:
    cluster = Cluster()
    cluster.settle()
    calls = []
    cluster.kube.list_pods = lambda *args: calls.append(args) or []  # type: ignore[method-assign]
    cluster.reconcile()
    assert calls == []


def test_the_beat_of_periodicjobs_carries_their_schedule_in_the_broker() -> None:
    cluster = Cluster({**SPEC, "broker": {"url": "redis://redis.shared:6379/0"}})
    job = {"apiVersion": "celery-operator.dev/v1alpha1", "kind": "PeriodicJob",
           "metadata": {"name": "nightly", "namespace": "ns", "uid": "pj-1", "generation": 1},
           "spec": {"taskQueueRef": {"name": "shop"}, "task": "myapp.tasks.cleanup", "schedule": "0 3 * * *"}}
    writes = cluster.reconcile([job])
    assert ("apply", "Deployment", "shop-beat") in writes
    [(location, state)] = cluster.runtime.beat_state.states.items()  # type: ignore[attr-defined]
    assert location == ("redis://redis.shared:6379/0", "celery-operator:beat:{ns/shop}:")
    assert list(state.jobs) == ["nightly"]
    assert cluster.condition("BeatReady")["reason"] == "BeatNotAvailable"

    cluster.kube.roll_out_all()
    state.heartbeat = {"instance": "shop-beat-abc"}
    cluster.reconcile([job])
    assert (cluster.condition("BeatReady")["status"], cluster.condition("BeatReady")["reason"]) == (
        "True", "BeatRunning")
    assert cluster.reconcile([job]) == [] and cluster.runtime.beat_state.writes == 1  # type: ignore[attr-defined]

    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5)
    writes = cluster.reconcile([], now=later)  # past the grace a just-written entry gets (beat/jobs.py)
    assert ("delete", "Deployment", "shop-beat") in writes
    assert state.jobs == {}, "the job leaves the schedule with the beat"
    assert "BeatReady" not in {c["type"] for c in cluster.body["status"]["conditions"]}


def test_an_unreachable_broker_is_told_and_heals() -> None:
    url = "redis://redis.shared:6379/0"
    cluster = Cluster({**SPEC, "broker": {"url": url}})
    cluster.runtime.brokers.unreachable[url] = "broker not reachable: ConnectionError"  # type: ignore[attr-defined]
    cluster.settle()
    assert (cluster.condition("BrokerReady")["reason"], cluster.condition("Ready")["reason"]) == (
        "BrokerUnreachable", "BrokerUnreachable")
    cluster.runtime.brokers.unreachable.clear()  # type: ignore[attr-defined]
    cluster.reconcile()
    assert cluster.condition("Ready")["status"] == "True"


def test_a_managed_broker_that_does_not_answer_just_after_its_pod_became_available_is_still_starting() -> None:
    """The Service in front of a new broker pod reaches the nodes' proxies and the cluster DNS a moment
    after the pod is Ready: a healthy start reports progress (a Normal Event), never a Warning. A broker
    that still does not answer once that moment has passed is unreachable."""
    cluster = Cluster()
    available_at = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.timezone.utc)
    cluster.reconcile(now=available_at)
    cluster.kube.roll_out_all()
    cluster.kube.roll_out("shop-broker", at=available_at)
    url = reconcile.decode_secret_value(cluster.kube.child("Secret", "shop-broker"), "url")
    cluster.runtime.brokers.unreachable[url] = "broker not reachable: ConnectionError"  # type: ignore[attr-defined]

    cluster.reconcile(now=available_at + datetime.timedelta(seconds=2))
    broker = cluster.condition("BrokerReady")
    assert (broker["status"], broker["reason"]) == ("False", "BrokerStarting")
    assert "does not answer yet" in broker["message"] and "ConnectionError" in broker["message"]
    assert [kind for _, kind, _, _ in cluster.kube.events] == ["Normal"]

    cluster.runtime.brokers.unreachable.clear()  # type: ignore[attr-defined]
    cluster.reconcile(now=available_at + datetime.timedelta(seconds=4))
    assert cluster.condition("Ready")["status"] == "True"
    assert [kind for _, kind, _, _ in cluster.kube.events] == ["Normal", "Normal"]

    cluster.runtime.brokers.unreachable[url] = "broker not reachable: ConnectionError"  # type: ignore[attr-defined]
    cluster.reconcile(now=available_at + datetime.timedelta(seconds=reconcile.BROKER_ANSWER_GRACE_SECONDS + 1))
    assert cluster.condition("BrokerReady")["reason"] == "BrokerUnreachable"
    assert cluster.kube.events[-1][1:3] == ("Warning", "BrokerUnreachable")


def test_a_pass_with_a_body_read_before_the_last_status_write_repeats_neither_the_write_nor_the_event() -> None:
    """A timer and a change handler of one TaskQueue may both hold the body of before the edit."""
    cluster = Cluster({**SPEC, "broker": {"url": "redis://redis.shared:6379/0"}})
    cluster.settle()
    cluster.edit({**SPEC, "broker": {"urlSecretRef": {"name": "absent", "key": "url"}}})
    before_the_write = cluster.kube.body("TaskQueue", "shop")
    cluster.reconcile()
    assert cluster.condition("Ready")["reason"] == "BrokerSecretNotFound"
    mark, events = len(cluster.kube.writes), list(cluster.kube.events)
    reconcile.reconcile_taskqueue(cluster.runtime, before_the_write, cluster.kube.children_of(cluster.uid), [])
    assert cluster.kube.writes_since(mark) == [] and cluster.kube.events == events
    assert [reason for _, _, reason, _ in events].count("BrokerSecretNotFound") == 1


def test_a_pass_in_a_namespace_being_deleted_ends_quietly_and_other_refusals_still_raise() -> None:
    cluster = Cluster()
    cluster.kube.terminating.add("ns")
    cluster.reconcile()  # returns: nothing can be created there, nothing to retry or report
    assert cluster.kube.child("Secret", "shop-broker") is None and cluster.kube.events == []
    cluster.kube.terminating.clear()
    cluster.settle()

    def refuse(*_: Any, **__: Any) -> None:
        raise KubeError(403, "Forbidden", 'taskqueues.celery-operator.dev "shop" is forbidden: '
                        'User cannot patch resource "taskqueues/status"', ())
    cluster.kube.apply_status = refuse  # type: ignore[method-assign]
    cluster.edit({**SPEC, "queues": [{"name": "fast", "replicas": 2}]})
    with pytest.raises(KubeError):
        cluster.reconcile()


def _broker_pod(name: str, *, restarts: int = 0, last: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"name": "redis", "restartCount": restarts, "ready": True, "state": {"running": {}}}
    if last is not None:
        status["lastState"] = {"terminated": last}
    return {"metadata": {"name": name, "namespace": "ns", "creationTimestamp": "2026-12-07T12:00:00Z",
                         "labels": {"app.kubernetes.io/name": "celery", "app.kubernetes.io/managed-by": "celery-operator",
                                    "app.kubernetes.io/instance": "shop", "app.kubernetes.io/component": "broker"}},
            "status": {"phase": "Running", "containerStatuses": [status]}}


def _settled_on_a_known_broker_run(spec: dict[str, Any] = SPEC, *,
                                   append_only: bool = True) -> tuple[Cluster, str, Any]:
    """A settled TaskQueue whose broker's first run the status has recorded: the cluster, the
    broker's URL, and the fake brokers (`restart` starts a new run)."""
    cluster = Cluster(spec)
    cluster.settle()
    url = reconcile.decode_secret_value(cluster.kube.child("Secret", "shop-broker"), "url")
    brokers = cluster.runtime.brokers
    brokers.restart(url, append_only=append_only, uptime_seconds=600)  # type: ignore[attr-defined]
    cluster.reconcile()
    return cluster, url, brokers


def _restarts_told(cluster: Cluster) -> list[tuple[str, str]]:
    return [(kind, message) for _, kind, reason, message in cluster.kube.events if reason == "BrokerRestarted"]


def test_a_restarted_broker_is_recorded_and_told_once_with_its_cause_and_what_it_holds() -> None:
    cluster, url, brokers = _settled_on_a_known_broker_run()
    first = cluster.body["status"]["broker"]
    assert set(first) == {"runId"}, "the first run seen is no restart"
    assert not _restarts_told(cluster)

    cluster.kube.pods.append(_broker_pod("shop-broker-7d-a", restarts=1,
                                         last={"reason": "Error", "exitCode": 137}))
    brokers.restart(url, append_only=True)  # type: ignore[attr-defined]
    brokers.messages[url] = 100  # type: ignore[attr-defined]
    for _ in range(3):
        cluster.reconcile()
    record = cluster.body["status"]["broker"]
    assert record["runId"] != first["runId"]
    assert record["lastRestart"]["messages"] == 100 and record["lastRestart"]["appendOnly"] is True
    assert _restarts_told(cluster) == [("Normal", "redis-server exited in pod shop-broker-7d-a (Error, exit code 137) and the kubelet "
                     "restarted it; it replayed its append-only file: its queues hold 100 message(s) now")]
    assert cluster.reconcile() == [], "a settled broker costs no write"


def test_an_ephemeral_broker_that_restarts_says_the_queue_started_empty() -> None:
    cluster, url, brokers = _settled_on_a_known_broker_run(
        {**SPEC, "broker": {"managed": {"persistence": {"enabled": False}}}}, append_only=False)
    cluster.kube.pods.append(_broker_pod("shop-broker-7d-b"))
    brokers.restart(url, append_only=False)  # type: ignore[attr-defined]
    cluster.reconcile()
    assert _restarts_told(cluster) == [("Warning", "the broker runs in a new pod, shop-broker-7d-b; it keeps no append-only file "
                     "(spec.broker.managed.persistence.enabled is false), so the queue started empty: every "
                     "message it held before the restart is lost; its queues hold 0 message(s) now")]
    assert cluster.body["status"]["broker"]["lastRestart"]["appendOnly"] is False


def test_a_pass_on_a_body_read_before_the_last_write_keeps_the_broker_run_it_recorded() -> None:
    cluster, url, brokers = _settled_on_a_known_broker_run()
    stale = copy.deepcopy(cluster.body)  # read before the write that records the restart below
    brokers.restart(url, append_only=True)  # type: ignore[attr-defined]
    cluster.reconcile()
    run = cluster.body["status"]["broker"]["runId"]
    brokers.unreachable[url] = "broker not reachable: ConnectionError"  # type: ignore[attr-defined]
    reconcile.reconcile_taskqueue(cluster.runtime, stale, cluster.kube.children_of(cluster.uid))
    brokers.unreachable.clear()  # type: ignore[attr-defined]
    cluster.reconcile()
    assert cluster.body["status"]["broker"]["runId"] == run
    assert len(_restarts_told(cluster)) == 1
