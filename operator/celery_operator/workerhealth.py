"""Worker health from the workers' own heartbeats and the kubelet's pod status. Pure: no I/O, no
clock reads (the scaler tick passes `now` and applies the verdict).

Three findings per worker pod, once per scaler tick:

1. Consuming, the pod's readiness gate (naming.CONDITION_CONSUMING). True once a heartbeat of the
   container's current run arrived (Celery sends its first, worker-online, after its consumer
   started); False on positive evidence that it stopped: its heartbeats went silent while the
   container runs, it said goodbye (worker-offline), it holds free slots while its queue's messages
   wait and takes none, or the container is not running. Nothing is decided without heartbeats to
   go by (broker unreadable, monitor warming up): the pods keep what they have.
2. Stuck: heartbeats silent for `heartbeatTimeoutSeconds` while the container runs (a frozen or
   wedged main process), or free slots with messages waiting and nothing taken for
   `idleWithBacklogSeconds` (a consumer lost after a broker reconnect). Reported once per pod;
   with action Restart the caller deletes the pod. The solo pool is silent while it runs a task,
   so heartbeat silence is no evidence there.
3. Restarts: a worker container whose restartCount rose since the last tick, with the kubelet's
   reason and exit code and the tasks it was executing at its last heartbeat.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from . import naming
from .broker.heartbeats import WorkerState
from .models import WorkerSettings

HEARTBEATS_STOPPED: Final = "heartbeats-stopped"
IDLE_WITH_BACKLOG: Final = "idle-with-backlog"
Evidence = Literal["heartbeats-stopped", "idle-with-backlog"]
# The kubelet's startedAt has one-second resolution and is truncated: a heartbeat sent in the same
# second as the start can carry a timestamp up to a second "before" it.
START_SLACK_SECONDS: Final = 1.0
# Heartbeats come every 2 s; on a loaded node one or two arrive late. The gate turns False only
# after this much silence, so availability does not flap with the machine's load.
GATE_SILENCE_SECONDS: Final = 10.0


@dataclass(frozen=True)
class Termination:
    reason: str  # the kubelet's: OOMKilled, Error, Completed, ...
    exit_code: int
    finished_at: str | None  # RFC 3339


@dataclass(frozen=True)
class WorkerPod:
    """A worker pod as the scaler sees it (from the operator's pod index)."""

    name: str
    uid: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    consuming: str | None = None  # the readiness gate's status now: "True", "False" or None (unset)
    running_since: float | None = None  # epoch seconds the worker container's current run began
    restarts: int = 0  # the worker container's restartCount
    last_termination: Termination | None = None  # of the container's previous run


@dataclass(frozen=True)
class GateChange:
    pod: str
    status: Literal["True", "False"]
    reason: str
    message: str


@dataclass(frozen=True)
class Stuck:
    pod: str
    uid: str
    evidence: Evidence
    message: str


@dataclass(frozen=True)
class Restart:
    pod: str
    restarts: int  # how many since the last tick
    reason: str
    exit_code: int | None
    in_flight: int  # tasks executing at the worker's last heartbeat before it stopped
    finished_at: str | None

    def message(self) -> str:
        code = f", exit code {self.exit_code}" if self.exit_code is not None else ""
        times = f" {self.restarts} times" if self.restarts > 1 else ""
        return (f"worker container of pod {self.pod} restarted{times} ({self.reason}{code}) with "
                f"{self.in_flight} task(s) in flight at its last heartbeat")


@dataclass(frozen=True)
class PodMemory:
    """What the tick remembers of one worker pod between ticks."""

    restarts: int = 0
    active: int = 0  # tasks executing at the last heartbeat of the current run
    processed: int = -1  # tasks taken at the last look (-1: none seen yet)
    backlog_since: float | None = None  # since when it has had free slots, messages waiting, taken none
    stuck: bool = False  # reported already: no second Event for the same pod


@dataclass(frozen=True)
class Verdict:
    gates: tuple[GateChange, ...]
    stuck: tuple[Stuck, ...]
    restarts: tuple[Restart, ...]
    consuming: int  # pods whose gate is True after the changes
    memory: Mapping[str, PodMemory]  # by pod name, for the next tick (pods gone are dropped)


@dataclass(frozen=True)
class QueueFacts:
    """One queue on one tick: its workers' settings, its pods, what their heartbeats say."""

    hostname_of: Mapping[str, str]  # pod -> the worker's Celery hostname
    settings: WorkerSettings
    pods: Sequence[WorkerPod]
    heartbeats: Mapping[str, WorkerState] | None  # by pod; None: no heartbeats to go by this tick
    pending: int | None  # messages waiting; None: the broker could not be read


def _current_run(pod: WorkerPod, heartbeat: WorkerState | None) -> WorkerState | None:
    """The heartbeat if it was sent by the container's current run, else None."""
    if heartbeat is None or pod.running_since is None:
        return None
    return heartbeat if heartbeat.timestamp >= pod.running_since - START_SLACK_SECONDS else None


def _restart(pod: WorkerPod, memory: PodMemory | None) -> Restart | None:
    if memory is None or pod.restarts <= memory.restarts:
        return None
    last = pod.last_termination
    return Restart(pod=pod.name, restarts=pod.restarts - memory.restarts,
                   reason=last.reason if last else "Unknown", exit_code=last.exit_code if last else None,
                   in_flight=memory.active, finished_at=last.finished_at if last else None)


def _backlog_since(facts: QueueFacts, heartbeat: WorkerState, memory: PodMemory, now: float) -> float | None:
    """Since when this worker has had free slots while messages wait, taking none (None: it has not)."""
    waiting = facts.pending is not None and facts.pending > 0
    free = heartbeat.active < facts.settings.concurrency
    took = memory.processed >= 0 and heartbeat.processed != memory.processed
    if not (waiting and free) or took:
        return None
    return memory.backlog_since if memory.backlog_since is not None else now


def _stuck_evidence(facts: QueueFacts, pod: WorkerPod, heartbeat: WorkerState, backlog_since: float | None,
                    now: float) -> tuple[Evidence, str] | None:
    health = facts.settings.health
    hostname = facts.hostname_of[pod.name]
    if heartbeat.silent and facts.settings.pool != "solo" and health.heartbeat_timeout_seconds and \
            heartbeat.age >= health.heartbeat_timeout_seconds:
        return HEARTBEATS_STOPPED, (f"no heartbeat from {hostname} for {heartbeat.age:.0f}s while its container "
                                    f"runs (threshold {health.heartbeat_timeout_seconds}s)")
    if backlog_since is not None and health.idle_with_backlog_seconds and \
            now - backlog_since >= health.idle_with_backlog_seconds:
        return IDLE_WITH_BACKLOG, (f"{hostname} has {facts.settings.concurrency - heartbeat.active} free slot(s) "
                                   f"and took no task for {now - backlog_since:.0f}s while {facts.pending} "
                                   f"message(s) waited (threshold {health.idle_with_backlog_seconds}s)")
    return None


def _gate(pod: WorkerPod, hostname: str, heartbeat: WorkerState | None, stuck: Evidence | None,
          solo: bool) -> GateChange | None:
    """The gate's new status, or None to leave it as it is."""
    if pod.running_since is None:
        if pod.consuming != "True":
            return None  # not started yet, or already marked: nothing to write
        wanted = ("False", "ContainerNotRunning", f"the worker container of {pod.name} is not running")
    elif heartbeat is None:
        if pod.consuming != "True":
            return None  # still starting: no condition means not ready
        wanted = ("False", "WorkerOffline", f"{hostname} is not heartbeating (it shut down or has not started)")
    elif heartbeat.age > GATE_SILENCE_SECONDS or stuck == HEARTBEATS_STOPPED:
        if solo:
            return None  # a solo worker is silent while it runs a task
        wanted = ("False", "HeartbeatsStopped", f"no heartbeat from {hostname} for {heartbeat.age:.0f}s")
    elif stuck == IDLE_WITH_BACKLOG:
        wanted = ("False", "NotConsuming", f"{hostname} has free slots and takes none of its queue's messages")
    elif heartbeat.silent:
        return None  # a late heartbeat or two: no verdict yet
    else:
        wanted = ("True", "Consuming", f"{hostname} consumes: {heartbeat.active} active, "
                                       f"{heartbeat.processed} taken")
    if pod.consuming == wanted[0]:
        return None
    return GateChange(pod.name, *wanted)  # type: ignore[arg-type]


def assess(facts: QueueFacts, memory: Mapping[str, PodMemory], now: float) -> Verdict:
    """Every finding for one queue's pods; `now` is the caller's monotonic clock (seconds)."""
    gates: list[GateChange] = []
    stuck: list[Stuck] = []
    restarts: list[Restart] = []
    remembered: dict[str, PodMemory] = {}
    consuming = 0
    for pod in facts.pods:
        previous = memory.get(pod.name)
        restart = _restart(pod, previous)
        if restart is not None:
            restarts.append(restart)
        # a new pod, or a new run of its container: what the old run did no longer counts
        fresh = previous is None or restart is not None
        state = PodMemory(restarts=pod.restarts) if fresh else replace(previous, restarts=pod.restarts)
        if facts.heartbeats is None:  # nothing to go by: keep the gate, forget no evidence
            remembered[pod.name] = state
            consuming += pod.consuming == "True"
            continue
        heartbeat = _current_run(pod, facts.heartbeats.get(pod.name))
        finding = None
        if heartbeat is not None:
            backlog_since = _backlog_since(facts, heartbeat, state, now) if not heartbeat.silent else None
            finding = _stuck_evidence(facts, pod, heartbeat, backlog_since, now)
            state = replace(state, active=heartbeat.active if not heartbeat.silent else state.active,
                            processed=heartbeat.processed, backlog_since=backlog_since)
        if finding is not None and not state.stuck:
            stuck.append(Stuck(pod.name, pod.uid, *finding))
        state = replace(state, stuck=finding is not None)
        change = _gate(pod, facts.hostname_of[pod.name], heartbeat, finding[0] if finding else None,
                       facts.settings.pool == "solo")
        if change is not None:
            gates.append(change)
        consuming += (change.status if change is not None else pod.consuming) == "True"
        remembered[pod.name] = state
    return Verdict(gates=tuple(gates), stuck=tuple(stuck), restarts=tuple(restarts), consuming=consuming,
                   memory=remembered)


# --- reading a pod ---------------------------------------------------------------------------------

def _epoch(timestamp: str | None) -> float | None:
    if not timestamp:
        return None
    return datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _termination(status: Mapping[str, Any]) -> Termination | None:
    terminated = (status.get("lastState") or {}).get("terminated")
    if not terminated:
        return None
    return Termination(reason=str(terminated.get("reason") or "Error"), exit_code=int(terminated.get("exitCode") or 0),
                       finished_at=terminated.get("finishedAt"))


def worker_pod(body: Mapping[str, Any], container: str) -> WorkerPod:
    """A worker pod from its manifest; `container` names the worker container."""
    metadata = body.get("metadata") or {}
    status = body.get("status") or {}
    consuming = next((c.get("status") for c in status.get("conditions") or []
                      if c.get("type") == naming.CONDITION_CONSUMING), None)
    worker = next((c for c in status.get("containerStatuses") or [] if c.get("name") == container), {})
    running = (worker.get("state") or {}).get("running")
    return WorkerPod(
        name=metadata["name"], uid=str(metadata.get("uid") or ""),
        annotations=dict(metadata.get("annotations") or {}),
        consuming=consuming,
        running_since=_epoch(running.get("startedAt")) if running else None,
        restarts=int(worker.get("restartCount") or 0),
        last_termination=_termination(worker),
    )
