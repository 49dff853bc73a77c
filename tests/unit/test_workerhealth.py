"""Worker health from heartbeats and pod status (workerhealth.py): the readiness gate
`celery-operator.dev/consuming`, stuck workers, container restarts, reading a pod; and the
workers.health / mingle / gossip fields of the spec (models.py)."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from celery_operator import naming
from celery_operator.broker.heartbeats import WorkerState
from celery_operator.models import SpecError, WorkerHealth, WorkerSettings, parse_taskqueue_spec
from celery_operator.workerhealth import (
    GATE_SILENCE_SECONDS,
    HEARTBEATS_STOPPED,
    IDLE_WITH_BACKLOG,
    PodMemory,
    QueueFacts,
    Restart,
    Termination,
    Verdict,
    WorkerPod,
    assess,
    worker_pod,
)

pytestmark = pytest.mark.unit

POD = "shop-worker-jobs-7f9c-abcde"
HOST = f"jobs@{POD}"
T0 = 1_800_000_000.0  # epoch second the worker container's current run began


def pod(name: str = POD, consuming: str | None = None, running_since: float | None = T0, restarts: int = 0,
        last_termination: Termination | None = None) -> WorkerPod:
    return WorkerPod(name=name, uid=f"uid-{name}", consuming=consuming, running_since=running_since,
                     restarts=restarts, last_termination=last_termination)


def beat(name: str = POD, active: int = 0, processed: int = 0, age: float = 1.0,
         timestamp: float = T0 + 5, freq: float = 2.0) -> WorkerState:
    """A worker's latest heartbeat as the monitor reports it (silent as the table computes it)."""
    return WorkerState(hostname=f"jobs@{name}", queue="jobs", pod=name, active=active, processed=processed,
                       freq=freq, timestamp=timestamp, age=age, silent=age > 2 * freq + 1)


def health(action: str = "Restart", heartbeat_timeout: int = 30, idle_with_backlog: int = 60) -> WorkerHealth:
    return WorkerHealth(action=action, heartbeat_timeout_seconds=heartbeat_timeout,
                        idle_with_backlog_seconds=idle_with_backlog)


def facts(pods: Sequence[WorkerPod], beats: Sequence[WorkerState] | None, pending: int | None = 0,
          pool: str = "prefork", concurrency: int = 2, worker_health: WorkerHealth | None = None) -> QueueFacts:
    return QueueFacts(hostname_of={p.name: f"jobs@{p.name}" for p in pods},
                      settings=WorkerSettings(concurrency=concurrency, pool=pool, health=worker_health or health()),
                      pods=tuple(pods), heartbeats=None if beats is None else {b.pod: b for b in beats},
                      pending=pending)


def gate_of(verdict: Verdict, name: str = POD) -> tuple[str, str] | None:
    """(status, reason) of the gate change for `name`, or None when its gate is left as it is."""
    changes = [(c.status, c.reason) for c in verdict.gates if c.pod == name]
    assert len(changes) <= 1, verdict.gates
    return changes[0] if changes else None


class Ticks:
    """assess() tick after tick, carrying its memory forward like the scaler does."""

    def __init__(self) -> None:
        self.memory: Mapping[str, PodMemory] = {}

    def __call__(self, queue: QueueFacts, now: float) -> Verdict:
        verdict = assess(queue, self.memory, now)
        self.memory = verdict.memory
        return verdict


# --- the readiness gate ---------------------------------------------------------------------------

@pytest.mark.parametrize("sent", [T0 + 0.5, T0, T0 - 1.0], ids=["after-start", "same-second", "start-slack"])
def test_the_gate_goes_true_on_the_first_heartbeat_of_the_current_run(sent: float) -> None:
    verdict = assess(facts([pod()], [beat(timestamp=sent, active=1, processed=3)]), {}, now=100.0)
    [change] = verdict.gates
    assert (change.pod, change.status, change.reason) == (POD, "True", "Consuming")
    assert HOST in change.message
    assert verdict.consuming == 1


def test_a_heartbeat_from_before_the_containers_restart_does_not_count() -> None:
    old = beat(timestamp=T0 - 1.01)  # sent by the previous run, kept by the monitor
    assert assess(facts([pod()], [old]), {}, now=100.0).gates == (), "a starting pod stays not ready"
    verdict = assess(facts([pod(consuming="True")], [old]), {}, now=100.0)
    assert gate_of(verdict) == ("False", "WorkerOffline"), "the old run's heartbeat keeps no gate open"
    assert verdict.consuming == 0


def test_a_starting_worker_without_heartbeat_gets_no_condition() -> None:
    verdict = assess(facts([pod()], []), {}, now=100.0)
    assert verdict.gates == () and verdict.stuck == () and verdict.consuming == 0


def test_the_gate_closes_after_more_than_ten_seconds_of_silence() -> None:
    assert GATE_SILENCE_SECONDS == 10.0
    verdict = assess(facts([pod(consuming="True")], [beat(age=10.5)]), {}, now=100.0)
    [change] = verdict.gates
    assert (change.status, change.reason) == ("False", "HeartbeatsStopped")
    assert HOST in change.message
    assert verdict.stuck == (), "10.5 s is below heartbeatTimeoutSeconds (30)"
    assert verdict.consuming == 0


@pytest.mark.parametrize("age", [5.5, 8.0, 10.0])
@pytest.mark.parametrize("consuming", [None, "True", "False"])
def test_five_to_ten_seconds_of_silence_is_no_verdict(age: float, consuming: str | None) -> None:
    verdict = assess(facts([pod(consuming=consuming)], [beat(age=age)]), {}, now=100.0)
    assert verdict.gates == (), "a late heartbeat or two neither opens nor closes the gate"
    assert verdict.consuming == (consuming == "True")


def test_a_worker_whose_heartbeat_is_gone_goes_offline() -> None:
    verdict = assess(facts([pod(consuming="True")], []), {}, now=100.0)
    assert gate_of(verdict) == ("False", "WorkerOffline")
    assert verdict.consuming == 0


def test_a_container_that_is_not_running_closes_the_gate() -> None:
    verdict = assess(facts([pod(consuming="True", running_since=None)], [beat()]), {}, now=100.0)
    [change] = verdict.gates
    assert (change.status, change.reason) == ("False", "ContainerNotRunning")
    assert POD in change.message


def test_an_unreadable_broker_changes_nothing() -> None:
    pods = [pod("a", consuming="True"), pod("b", consuming="False", restarts=1), pod("c")]
    memory = {"a": PodMemory(restarts=0, active=2, processed=9, backlog_since=40.0, stuck=True),
              "b": PodMemory(restarts=1, active=0, processed=3, backlog_since=None, stuck=False),
              "c": PodMemory()}
    verdict = assess(facts(pods, None, pending=None), memory, now=1000.0)
    assert verdict.gates == () and verdict.stuck == () and verdict.restarts == ()
    assert dict(verdict.memory) == memory, "no evidence forgotten while there is nothing to go by"
    assert verdict.consuming == 1


@pytest.mark.parametrize("consuming,running_since,beats", [
    ("True", T0, [beat(age=1.0)]),
    ("False", T0, [beat(age=20.0)]),
    ("False", None, []),
    ("False", T0, []),
    (None, T0, []),
], ids=["consuming", "silent", "not-running", "offline", "starting"])
def test_a_settled_pod_needs_no_write(consuming: str | None, running_since: float | None,
                                      beats: list[WorkerState]) -> None:
    verdict = assess(facts([pod(consuming=consuming, running_since=running_since)], beats), {}, now=100.0)
    assert verdict.gates == ()


# --- the solo pool ---------------------------------------------------------------------------------

def test_a_silent_solo_worker_is_busy_not_stuck() -> None:
    ticks = Ticks()
    for now, age in ((100.0, 1.0), (160.0, 60.0), (400.0, 300.0)):
        verdict = ticks(facts([pod(consuming="True")], [beat(age=age)], pending=4, pool="solo"), now)
        assert verdict.gates == () and verdict.stuck == (), f"{age}s of silence"
        assert verdict.consuming == 1
    prefork = assess(facts([pod(consuming="True")], [beat(age=300.0)], pending=4), {}, now=400.0)
    assert gate_of(prefork) == ("False", "HeartbeatsStopped") and len(prefork.stuck) == 1, "the same, not solo"


# --- stuck: heartbeats stopped ---------------------------------------------------------------------

def test_stopped_heartbeats_make_a_worker_stuck_at_the_threshold_and_it_is_reported_once() -> None:
    ticks = Ticks()
    queue = lambda age: facts([pod(consuming="False")], [beat(age=age)])  # noqa: E731
    assert ticks(queue(29.9), 100.0).stuck == ()
    verdict = ticks(queue(30.0), 102.0)
    [stuck] = verdict.stuck
    assert (stuck.pod, stuck.uid, stuck.evidence) == (POD, f"uid-{POD}", HEARTBEATS_STOPPED)
    assert HOST in stuck.message and "threshold 30s" in stuck.message
    assert verdict.memory[POD].stuck
    for now, age in ((104.0, 32.0), (106.0, 34.0)):
        assert ticks(queue(age), now).stuck == (), "one report per pod, not one per tick"
    assert ticks(facts([pod(consuming="False")], [beat(age=1.0)]), 108.0).stuck == ()
    assert not ticks.memory[POD].stuck, "heartbeats came back"
    assert len(ticks(queue(31.0), 140.0).stuck) == 1, "stopping again is a new finding"


def test_a_heartbeat_timeout_of_zero_never_makes_a_worker_stuck() -> None:
    verdict = assess(facts([pod(consuming="True")], [beat(age=5000.0)], worker_health=health(heartbeat_timeout=0)),
                     {}, now=6000.0)
    assert verdict.stuck == ()
    assert gate_of(verdict) == ("False", "HeartbeatsStopped"), "the gate still follows the heartbeats"


def test_the_threshold_is_the_queues_own() -> None:
    queue = facts([pod(consuming="False")], [beat(age=45.0)], worker_health=health(heartbeat_timeout=60))
    assert assess(queue, {}, now=100.0).stuck == ()


# --- stuck: idle with backlog ----------------------------------------------------------------------

def idle(processed: int = 7, active: int = 0, pending: int | None = 5, consuming: str = "True",
         concurrency: int = 2) -> QueueFacts:
    return facts([pod(consuming=consuming)], [beat(active=active, processed=processed)], pending=pending,
                 concurrency=concurrency)


def test_free_slots_with_messages_waiting_and_nothing_taken_is_stuck() -> None:
    ticks = Ticks()
    for now in (100.0, 130.0, 159.9):
        verdict = ticks(idle(), now)
        assert verdict.stuck == () and verdict.gates == (), f"{now - 100:.1f}s idle"
    verdict = ticks(idle(), 160.0)
    [stuck] = verdict.stuck
    assert stuck.evidence == IDLE_WITH_BACKLOG
    assert "2 free slot(s)" in stuck.message and "5 message(s)" in stuck.message and "threshold 60s" in stuck.message
    assert gate_of(verdict) == ("False", "NotConsuming")
    assert verdict.consuming == 0
    assert ticks(idle(consuming="False"), 170.0).stuck == (), "reported once"
    recovered = ticks(idle(processed=8, consuming="False"), 172.0)
    assert recovered.stuck == () and gate_of(recovered) == ("True", "Consuming"), "it takes tasks again"


def test_a_worker_taking_tasks_is_not_stuck() -> None:
    ticks = Ticks()
    for n, now in enumerate((100.0, 130.0, 160.0, 190.0, 220.0)):
        verdict = ticks(idle(processed=7 + n), now)
        assert verdict.stuck == () and verdict.gates == ()


@pytest.mark.parametrize("pending", [0, None])
def test_no_backlog_no_stuck(pending: int | None) -> None:
    ticks = Ticks()
    for now in (100.0, 170.0, 400.0):
        verdict = ticks(idle(pending=pending), now)
        assert verdict.stuck == () and verdict.gates == ()


def test_a_worker_with_every_slot_busy_is_not_idle() -> None:
    ticks = Ticks()
    for now in (100.0, 170.0, 400.0):
        assert ticks(idle(active=2, concurrency=2), now).stuck == ()


def test_the_backlog_clock_restarts_when_the_worker_takes_a_task() -> None:
    ticks = Ticks()
    ticks(idle(processed=7), 0.0)
    ticks(idle(processed=7), 50.0)
    ticks(idle(processed=8), 55.0)  # took one
    assert ticks(idle(processed=8), 100.0).stuck == (), "100 s since the first look, 45 s since it took a task"
    assert ticks(idle(processed=8), 159.0).stuck == ()
    assert len(ticks(idle(processed=8), 160.0).stuck) == 1


def test_an_idle_with_backlog_of_zero_never_makes_a_worker_stuck() -> None:
    ticks = Ticks()
    for now in (0.0, 100.0, 1000.0):
        queue = facts([pod(consuming="True")], [beat(processed=7)], pending=5,
                      worker_health=health(idle_with_backlog=0))
        assert ticks(queue, now).stuck == ()


# --- restarts --------------------------------------------------------------------------------------

OOM = Termination(reason="OOMKilled", exit_code=137, finished_at="2027-01-15T08:00:59Z")


def test_a_restart_is_reported_with_the_kubelets_reason_and_the_tasks_it_was_running() -> None:
    ticks = Ticks()
    ticks(facts([pod(consuming="True")], [beat(active=2, processed=10)]), 100.0)
    dying = ticks(facts([pod(consuming="True")], [beat(active=2, processed=10, age=6.0)]), 102.0)
    assert dying.restarts == ()
    restarted = pod(consuming="True", running_since=T0 + 60, restarts=1, last_termination=OOM)
    verdict = ticks(facts([restarted], [beat(active=2, processed=10, age=8.0)]), 104.0)
    assert verdict.restarts == (Restart(pod=POD, restarts=1, reason="OOMKilled", exit_code=137, in_flight=2,
                                        finished_at="2027-01-15T08:00:59Z"),)
    message = verdict.restarts[0].message()
    assert POD in message and "OOMKilled" in message and "exit code 137" in message and "2 task(s)" in message
    assert gate_of(verdict) == ("False", "WorkerOffline"), "the old run's heartbeat is no sign of the new one"
    again = ticks(facts([restarted], [beat(active=2, processed=10, age=10.0)]), 106.0)
    assert again.restarts == (), "one report per restart"


def test_several_restarts_between_ticks_are_counted() -> None:
    ticks = Ticks()
    ticks(facts([pod()], [beat(active=1)]), 100.0)
    verdict = ticks(facts([pod(restarts=3, running_since=T0 + 90, last_termination=OOM)], []), 130.0)
    [restart] = verdict.restarts
    assert (restart.restarts, restart.in_flight) == (3, 1)
    assert "3 times" in restart.message()


def test_the_first_sight_of_a_pod_is_a_baseline_not_a_restart() -> None:
    ticks = Ticks()
    assert ticks(facts([pod(restarts=3, last_termination=OOM)], [beat()]), 100.0).restarts == ()
    assert ticks.memory[POD].restarts == 3
    assert ticks(facts([pod(restarts=3, last_termination=OOM)], [beat()]), 102.0).restarts == ()
    [restart] = ticks(facts([pod(restarts=4, last_termination=OOM)], []), 104.0).restarts
    assert restart.restarts == 1


def test_a_new_run_starts_with_a_clean_slate() -> None:
    ticks = Ticks()
    ticks(facts([pod(consuming="True")], [beat(active=2)]), 100.0)
    old = [beat(active=2, age=9.0)]  # the first run's last heartbeat, kept by the monitor
    [first] = ticks(facts([pod(restarts=1, running_since=T0 + 60, last_termination=OOM)], old), 104.0).restarts
    assert first.in_flight == 2
    [second] = ticks(facts([pod(restarts=2, running_since=T0 + 120, last_termination=OOM)], old), 170.0).restarts
    assert second.in_flight == 0, "the second run never heartbeated: it ran no task"


# --- memory and counts -----------------------------------------------------------------------------

def test_pods_that_are_gone_are_forgotten() -> None:
    memory = {"a": PodMemory(restarts=1), "b": PodMemory(restarts=2, stuck=True)}
    verdict = assess(facts([pod("a")], [beat("a")]), memory, now=100.0)
    assert set(verdict.memory) == {"a"}


def test_consuming_counts_the_gates_true_after_the_changes() -> None:
    pods = [pod("opening"), pod("closing", consuming="True"), pod("open", consuming="True"),
            pod("closed", consuming="False"), pod("starting")]
    beats = [beat("opening"), beat("open"), beat("closed", age=20.0)]
    verdict = assess(facts(pods, beats), {}, now=100.0)
    assert {c.pod: c.status for c in verdict.gates} == {"opening": "True", "closing": "False"}
    assert verdict.consuming == 2


# --- reading a pod ---------------------------------------------------------------------------------

POD_MANIFEST: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": POD, "namespace": "shop", "uid": "6b1f0f1e-2c4d-4e8a-9d1b-0d4c2f3a9e11",
                 "labels": {"app.kubernetes.io/instance": "shop", "celery-operator.dev/queue": "jobs"},
                 "annotations": {"controller.kubernetes.io/pod-deletion-cost": "-1000"}},
    "spec": {"readinessGates": [{"conditionType": naming.CONDITION_CONSUMING}],
             "containers": [{"name": "worker"}, {"name": "sidecar"}]},
    "status": {
        "phase": "Running",
        "conditions": [
            {"type": "Initialized", "status": "True"},
            {"type": naming.CONDITION_CONSUMING, "status": "True", "reason": "Consuming",
             "lastTransitionTime": "2026-12-01T18:00:04Z"},
            {"type": "Ready", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
        ],
        "containerStatuses": [
            {"name": "sidecar", "ready": True, "restartCount": 9,
             "state": {"running": {"startedAt": "2026-11-30T00:00:00Z"}}, "lastState": {}},
            {"name": "worker", "ready": True, "restartCount": 2, "image": "acme/shop:1",
             "state": {"running": {"startedAt": "2026-12-01T18:00:00Z"}},
             "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137,
                                          "startedAt": "2026-12-01T17:40:00Z",
                                          "finishedAt": "2026-12-01T17:59:58Z"}}},
        ],
    },
}


def test_a_worker_pod_is_read_from_its_manifest() -> None:
    read = worker_pod(POD_MANIFEST, naming.WORKER_CONTAINER)
    started = datetime.datetime(2026, 12, 1, 18, 0, 0, tzinfo=datetime.timezone.utc).timestamp()
    assert read == WorkerPod(name=POD, uid="6b1f0f1e-2c4d-4e8a-9d1b-0d4c2f3a9e11",
                             annotations={"controller.kubernetes.io/pod-deletion-cost": "-1000"},
                             consuming="True", running_since=started, restarts=2,
                             last_termination=Termination("OOMKilled", 137, "2026-12-01T17:59:58Z"))


def test_a_waiting_worker_container_is_not_running() -> None:
    manifest = copy.deepcopy(POD_MANIFEST)
    worker = manifest["status"]["containerStatuses"][1]
    worker["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
    del manifest["status"]["conditions"][1]
    read = worker_pod(manifest, naming.WORKER_CONTAINER)
    assert (read.running_since, read.consuming, read.restarts) == (None, None, 2)
    assert read.last_termination is not None and read.last_termination.reason == "OOMKilled"


def test_a_pod_without_status_is_not_running_and_has_no_gate() -> None:
    read = worker_pod({"metadata": {"name": POD}}, naming.WORKER_CONTAINER)
    assert read == WorkerPod(name=POD, uid="", annotations={}, consuming=None, running_since=None, restarts=0,
                             last_termination=None)


# --- the spec: workers.health, mingle, gossip ----------------------------------------------------

BASE: dict[str, Any] = {"image": "shop:1", "app": "myproject", "queues": [{"name": "jobs"}, {"name": "mail"}]}


def parse(workers: dict[str, Any] | None = None, **queue_fields: Any) -> Any:
    spec = copy.deepcopy(BASE)
    if workers is not None:
        spec["workers"] = workers
    spec["queues"][0].update(queue_fields)
    return parse_taskqueue_spec(spec)


def test_health_mingle_and_gossip_default() -> None:
    spec = parse()
    for queue in spec.queues:
        assert queue.workers.health == WorkerHealth(action="Restart", heartbeat_timeout_seconds=30,
                                                    idle_with_backlog_seconds=60)
        assert (queue.workers.mingle, queue.workers.gossip) == (False, False)
    assert spec.workers.health.restarts


def test_health_mingle_and_gossip_parse_and_a_queue_overrides_them_field_by_field() -> None:
    spec = parse({"mingle": True, "health": {"action": "Report", "heartbeatTimeoutSeconds": 0,
                                             "idleWithBacklogSeconds": 120}},
                 gossip=True, health={"heartbeatTimeoutSeconds": 45})
    jobs, mail = spec.queues
    assert jobs.workers.health == WorkerHealth(action="Report", heartbeat_timeout_seconds=45,
                                               idle_with_backlog_seconds=120)
    assert (jobs.workers.mingle, jobs.workers.gossip) == (True, True)
    assert mail.workers.health == WorkerHealth(action="Report", heartbeat_timeout_seconds=0,
                                               idle_with_backlog_seconds=120)
    assert (mail.workers.mingle, mail.workers.gossip) == (True, False)
    assert not mail.workers.health.restarts
    override = parse({"health": {"action": "Report"}}, health={"action": "Restart"})
    assert override.queues[0].workers.health.restarts and not override.queues[1].workers.health.restarts


@pytest.mark.parametrize("seconds", [0, 10, 86400])
def test_thresholds_at_the_bounds_are_accepted(seconds: int) -> None:
    spec = parse({"health": {"heartbeatTimeoutSeconds": seconds, "idleWithBacklogSeconds": seconds}})
    assert spec.workers.health.heartbeat_timeout_seconds == seconds
    assert spec.workers.health.idle_with_backlog_seconds == seconds


@pytest.mark.parametrize("workers,queue_fields,field", [
    ({"health": {"heartbeatTimeoutSeconds": 5}}, {}, "spec.workers.health.heartbeatTimeoutSeconds"),
    ({"health": {"heartbeatTimeoutSeconds": 9}}, {}, "spec.workers.health.heartbeatTimeoutSeconds"),
    ({"health": {"idleWithBacklogSeconds": 1}}, {}, "spec.workers.health.idleWithBacklogSeconds"),
    ({"health": {"idleWithBacklogSeconds": -1}}, {}, "spec.workers.health.idleWithBacklogSeconds"),
    ({"health": {"heartbeatTimeoutSeconds": 86401}}, {}, "spec.workers.health.heartbeatTimeoutSeconds"),
    ({"health": {"heartbeatTimeoutSeconds": "30s"}}, {}, "spec.workers.health.heartbeatTimeoutSeconds"),
    ({"health": {"action": "Kill"}}, {}, "spec.workers.health.action"),
    ({"health": "Restart"}, {}, "spec.workers.health"),
    ({"mingle": "yes"}, {}, "spec.workers.mingle"),
    ({}, {"gossip": 1}, "spec.queues[0].gossip"),
    ({}, {"health": {"heartbeatTimeoutSeconds": 5}}, "spec.queues[0].health.heartbeatTimeoutSeconds"),
    ({}, {"health": {"action": "restart"}}, "spec.queues[0].health.action"),
])
def test_bad_health_values_name_the_field(workers: dict[str, Any], queue_fields: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse(workers, **queue_fields)
    assert caught.value.field == field, str(caught.value)
    assert str(caught.value).startswith(field)


def test_a_short_threshold_is_refused_in_words_that_say_what_is_allowed() -> None:
    with pytest.raises(SpecError) as caught:
        parse({"health": {"heartbeatTimeoutSeconds": 5}})
    assert "0 (never) or at least 10" in caught.value.message and "5" in caught.value.message
    with pytest.raises(SpecError) as caught:
        parse({"health": {"action": "Kill"}})
    assert "Restart" in caught.value.message and "Report" in caught.value.message and "Kill" in caught.value.message
