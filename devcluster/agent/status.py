"""Pod status as the kubelet reports it: container statuses, phase and conditions. Pure.

The pod worker describes each container with a `ContainerView`; this module turns those into
the API's `status` (phase by the kubelet's rules, conditions with lastTransitionTime kept across
updates unless the status flips).
"""

from __future__ import annotations

import calendar
import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

REASON_COMPLETED = "Completed"
REASON_ERROR = "Error"
REASON_CONTAINER_STATUS_UNKNOWN = "ContainerStatusUnknown"
REASON_CONTAINER_CREATING = "ContainerCreating"
REASON_POD_INITIALIZING = "PodInitializing"
REASON_CRASH_LOOP = "CrashLoopBackOff"
REASON_CONFIG_ERROR = "CreateContainerConfigError"
REASON_NOT_RUNNABLE = "ImageEntrypointNotRunnable"
REASON_START_ERROR = "RunContainerError"


@dataclass(frozen=True)
class Waiting:
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Running:
    started_at: float


@dataclass(frozen=True)
class Terminated:
    exit_code: int
    reason: str
    started_at: float
    finished_at: float
    message: str = ""
    signal: int | None = None
    container_id: str = ""


ContainerState = Waiting | Running | Terminated


def exit_reason(exit_code: int) -> str:
    return REASON_COMPLETED if exit_code == 0 else REASON_ERROR


def exit_code_of_wait_status(status: int) -> tuple[int, int | None]:
    """(exit code, signal) from os.waitpid's status: a signal N is reported as 128+N."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        return 128 + number, number
    return os.waitstatus_to_exitcode(status), None


@dataclass(frozen=True)
class ContainerView:
    """What the agent knows about one container."""

    name: str
    image: str
    state: ContainerState
    last_state: Terminated | None = None
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    container_id: str = ""
    restartable_init: bool = False


def timestamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def normalized_image(image: str) -> str:
    """The image reference as a container runtime reports it (docker.io/library/x:latest)."""
    if not image:
        return image
    name, digest = (image.split("@", 1) + [""])[:2]
    first, _, rest = name.partition("/")
    if not rest or ("." not in first and ":" not in first and first != "localhost"):
        name = ("docker.io/library/" + name) if not rest else ("docker.io/" + name)
    last = name.rsplit("/", 1)[-1]
    if not digest and ":" not in last:
        name += ":latest"
    return f"{name}@{digest}" if digest else name


def image_id(image: str) -> str:
    """A stable image ID in the runtime's `repo@sha256:...` form (images are not pulled here)."""
    reference = normalized_image(image)
    if "@" in reference:
        return reference
    repository = reference.rsplit(":", 1)[0] if ":" in reference.rsplit("/", 1)[-1] else reference
    return f"{repository}@sha256:{hashlib.sha256(reference.encode()).hexdigest()}"


def container_id(pod_uid: str, name: str, restart_count: int) -> str:
    digest = hashlib.sha256(f"{pod_uid}/{name}/{restart_count}".encode()).hexdigest()
    return f"devcluster://{digest}"


def _state_dict(state: ContainerState | None, current_id: str) -> dict[str, Any]:
    if state is None:
        return {}
    if isinstance(state, Waiting):
        waiting: dict[str, Any] = {"reason": state.reason}
        if state.message:
            waiting["message"] = state.message
        return {"waiting": waiting}
    if isinstance(state, Running):
        return {"running": {"startedAt": timestamp(state.started_at)}}
    terminated: dict[str, Any] = {
        "exitCode": state.exit_code,
        "reason": state.reason,
        "startedAt": timestamp(state.started_at),
        "finishedAt": timestamp(state.finished_at),
    }
    if state.container_id or current_id:
        terminated["containerID"] = state.container_id or current_id
    if state.signal:
        terminated["signal"] = state.signal
    if state.message:
        terminated["message"] = state.message
    return {"terminated": terminated}


def container_status(view: ContainerView) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": view.name,
        "image": normalized_image(view.image),
        "imageID": image_id(view.image) if not isinstance(view.state, Waiting) or view.last_state else "",
        "ready": view.ready,
        "restartCount": view.restart_count,
        "started": view.started,
        "state": _state_dict(view.state, view.container_id),
        "lastState": _state_dict(view.last_state, ""),
    }
    if view.container_id and not isinstance(view.state, Waiting):
        status["containerID"] = view.container_id
    return status


def pod_phase(restart_policy: str, init_views: Sequence[ContainerView], views: Sequence[ContainerView],
              terminal: bool, initialized_before: bool) -> str:
    """The kubelet's phase rules. `terminal`: the pod is being torn down and nothing runs any more."""
    pending_init = failed_init = pending_sidecars = 0
    unknown = running = waiting = stopped = succeeded = 0
    for view in init_views:
        if view.restartable_init:
            state = view.state
            if isinstance(state, Running):
                running += 1
                if not view.started:
                    pending_sidecars += 1
            elif isinstance(state, Waiting) and view.last_state is None:
                pending_sidecars += 1
            continue
        state = view.state
        if isinstance(state, Running):
            pending_init += 1
        elif isinstance(state, Terminated):
            failed_init += state.exit_code != 0
        elif view.last_state is not None:
            failed_init += view.last_state.exit_code != 0
        else:
            pending_init += 1
    for view in views:
        state = view.state
        if isinstance(state, Running):
            running += 1
        elif isinstance(state, Terminated):
            stopped += 1
            succeeded += state.exit_code == 0
        elif view.last_state is not None:
            stopped += 1
        else:
            waiting += 1
    if failed_init and restart_policy == "Never":
        return "Failed"
    if pending_init or (pending_sidecars and not initialized_before) or waiting:
        return "Pending"
    if running and not unknown:
        return "Running"
    if not running and stopped and not unknown:
        if terminal:
            return "Succeeded" if stopped == succeeded else "Failed"
        if restart_policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if restart_policy == "Never":
            return "Failed"
        return "Running"
    return "Pending"


def _condition(kind: str, ok: bool, reason: str = "", message: str = "") -> dict[str, Any]:
    """A condition; reason and message are null when they do not apply, so that a strategic merge
    patch (which merges conditions by type) removes the ones of an earlier status."""
    return {"type": kind, "status": "True" if ok else "False",
            "reason": reason if not ok and reason else None,
            "message": message if not ok and message else None}


def _names(views: Iterable[ContainerView]) -> str:
    return "[" + " ".join(view.name for view in views) + "]"


def pod_conditions(phase: str, sandbox_ready: bool, init_views: Sequence[ContainerView],
                   views: Sequence[ContainerView], readiness_gates: Sequence[str] = (),
                   existing: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """PodReadyToStartContainers, Initialized, Ready and ContainersReady (PodScheduled is the
    scheduler's). Without lastTransitionTime: `merge_conditions` adds it."""
    incomplete_init = [
        view for view in init_views
        if (view.restartable_init and not (isinstance(view.state, Running) and view.started))
        or (not view.restartable_init and not (isinstance(view.state, Terminated) and view.state.exit_code == 0))
    ]
    initialized = _condition("Initialized", not incomplete_init, "ContainersNotInitialized",
                             f"containers with incomplete status: {_names(incomplete_init)}")
    if phase in ("Succeeded", "Failed"):
        reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"
        containers_ready = _condition("ContainersReady", False, reason)
        ready = _condition("Ready", False, reason)
    else:
        unready = [view for view in [*[v for v in init_views if v.restartable_init], *views] if not view.ready]
        message = f"containers with unready status: {_names(unready)}"
        containers_ready = _condition("ContainersReady", not unready, "ContainersNotReady", message)
        ready = _condition("Ready", not unready, "ContainersNotReady", message)
        if not unready and readiness_gates:
            by_type = {c.get("type"): c for c in existing}
            for gate in readiness_gates:
                found = by_type.get(gate)
                if found is None:
                    ready = _condition("Ready", False, "ReadinessGatesNotReady",
                                       f'corresponding condition of pod readiness gate "{gate}" does not exist.')
                    break
                if found.get("status") != "True":
                    ready = _condition("Ready", False, "ReadinessGatesNotReady",
                                       f'the status of pod readiness gate "{gate}" is not "True", '
                                       f'but {found.get("status")}')
                    break
    sandbox = _condition("PodReadyToStartContainers", sandbox_ready)
    return [sandbox, initialized, ready, containers_ready]


def merge_conditions(previous: Sequence[Mapping[str, Any]], current: Sequence[Mapping[str, Any]],
                     now: float) -> list[dict[str, Any]]:
    """`current` with lastTransitionTime kept from `previous` unless the
    status flipped."""
    before = {c.get("type"): c for c in previous}
    merged = []
    for condition in current:
        entry = dict(condition)
        old = before.get(entry["type"])
        if old is not None and old.get("status") == entry["status"] and old.get("lastTransitionTime"):
            entry["lastTransitionTime"] = old["lastTransitionTime"]
        else:
            entry["lastTransitionTime"] = timestamp(now)
        merged.append(entry)
    return merged


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))


def state_from_api(state: Mapping[str, Any] | None) -> ContainerState | None:
    """A container state as the API reported it (to resume after an agent restart)."""
    if not state:
        return None
    if state.get("running") is not None:
        return Running(parse_time(state["running"].get("startedAt")) or time.time())
    if state.get("terminated") is not None:
        found = state["terminated"]
        finished = parse_time(found.get("finishedAt")) or time.time()
        return Terminated(exit_code=int(found.get("exitCode", 0)), reason=found.get("reason", ""),
                          started_at=parse_time(found.get("startedAt")) or finished, finished_at=finished,
                          message=found.get("message", ""), signal=found.get("signal"),
                          container_id=found.get("containerID", ""))
    if state.get("waiting") is not None:
        return Waiting(state["waiting"].get("reason", ""), state["waiting"].get("message", ""))
    return None


@dataclass(frozen=True)
class PodFacts:
    """What the pod status is made of, besides its containers."""

    restart_policy: str
    host_ip: str
    pod_ip: str
    start_time: float
    generation: int | None = None
    readiness_gates: Sequence[str] = ()
    initialized_before: bool = False
    failure: tuple[str, str] | None = None  # (reason, message) the node failed the pod for


def pod_status(facts: PodFacts, init_views: Sequence[ContainerView], views: Sequence[ContainerView], *,
               terminal: bool, api_status: Mapping[str, Any], previous_conditions: Sequence[Mapping[str, Any]],
               now: float) -> dict[str, Any]:
    """The status the agent reports: phase (terminal phases never change back), conditions,
    addresses, start time and container statuses."""
    phase = pod_phase(facts.restart_policy, init_views, views, terminal=terminal,
                      initialized_before=facts.initialized_before)
    if facts.failure is not None:
        phase = "Failed"
    if api_status.get("phase") in ("Succeeded", "Failed"):
        phase = api_status["phase"]
    existing = api_status.get("conditions") or []
    conditions = merge_conditions(previous_conditions or existing,
                                  pod_conditions(phase, not terminal, init_views, views, facts.readiness_gates,
                                                 existing), now)
    if facts.generation is not None:
        for condition in conditions:
            condition["observedGeneration"] = facts.generation
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": facts.host_ip,
        "hostIPs": [{"ip": facts.host_ip}],
        "podIP": facts.pod_ip,
        "podIPs": [{"ip": facts.pod_ip}],
        "startTime": timestamp(facts.start_time),
        "containerStatuses": [container_status(view) for view in views],
    }
    if init_views:
        status["initContainerStatuses"] = [container_status(view) for view in init_views]
    if facts.generation is not None:
        status["observedGeneration"] = facts.generation
    if facts.failure is not None:
        status["reason"], status["message"] = facts.failure
    return status


def _without_nulls(condition: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in condition.items() if value is not None and key != "lastProbeTime"}


def already_reported(status: Mapping[str, Any], api_status: Mapping[str, Any]) -> bool:
    """True when the API already holds `status` (so patching it would change nothing)."""
    for key, value in status.items():
        if key == "conditions":
            reported = {c.get("type"): _without_nulls(c) for c in api_status.get("conditions") or []}
            if any(reported.get(c["type"]) != _without_nulls(c) for c in value):
                return False
        elif api_status.get(key) != value:
            return False
    return True
