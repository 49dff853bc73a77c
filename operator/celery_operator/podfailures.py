"""Why a child Deployment's pods cannot run, in the kubelet's own words, and why a volume claim
does not bind, in the binder's or the provisioner's. Pure.

Read from pod statuses: a container waiting for a reason that will not pass by itself (its image
cannot be pulled, its configuration names a missing Secret or ConfigMap key, it keeps crashing),
or a container whose last run was OOM-killed. The reconciler asks only about Deployments that have
not rolled out, so a settled TaskQueue reads no pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
import re
from dataclasses import dataclass
from typing import Any, Final

OOM_KILLED: Final = "OOMKilled"
CRASH_LOOP: Final = "CrashLoopBackOff"
# Waiting reasons of the kubelet that mean "cannot run", most telling first: the one reported when
# pods of one Deployment disagree.
WAITING_REASONS: Final = (
    "InvalidImageName",
    "ErrImageNeverPull",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    CRASH_LOOP,
)
_IMAGE_REASONS: Final = frozenset(WAITING_REASONS[:4])
# The kubelet waits only a second for its watch of a pod's Secrets and ConfigMaps to sync, and
# reports a CreateContainerConfigError with one of these messages when it has not yet (on a node
# that just started, or one slow under load). It retries on its next sync of the pod: starting, not
# failing.
_CACHE_NOT_SYNCED: Final = re.compile(r'^(failed to sync \w+ cache\b|object ".*" not registered$)')
_RANK: Final = {reason: rank for rank, reason in enumerate((*WAITING_REASONS[:-1], OOM_KILLED, CRASH_LOOP))}


@dataclass(frozen=True)
class PodFailure:
    deployment: str
    container: str
    reason: str  # the kubelet's: ImagePullBackOff, CreateContainerConfigError, CrashLoopBackOff, OOMKilled, ...
    detail: str = ""  # the image that cannot be pulled, or the kubelet's message

    def describe(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"Deployment {self.deployment}: container {self.container} cannot run ({self.reason}{detail})"


def _container_failure(status: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, detail) of one containerStatuses entry, None when it runs or is merely starting."""
    waiting = (status.get("state") or {}).get("waiting") or {}
    last = (status.get("lastState") or {}).get("terminated") or {}
    terminated = (status.get("state") or {}).get("terminated") or {}
    reason = waiting.get("reason")
    if reason in _IMAGE_REASONS:
        return reason, f"image {status.get('image', '')}".strip()
    if (reason == CRASH_LOOP and last.get("reason") == OOM_KILLED) or terminated.get("reason") == OOM_KILLED:
        return OOM_KILLED, "the container ran out of memory; raise its memory limit"
    if reason == "CreateContainerConfigError" and _CACHE_NOT_SYNCED.match(str(waiting.get("message") or "")):
        return None
    if reason in WAITING_REASONS:
        return reason, str(waiting.get("message") or "")[:300]
    if last.get("reason") == OOM_KILLED and not status.get("ready"):
        return OOM_KILLED, "the container ran out of memory; raise its memory limit"
    return None


def pod_failure(deployment: str, pod: Mapping[str, Any]) -> PodFailure | None:
    """The most telling failure of one pod's containers (init containers first), or None."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None  # leaving: what it says no longer matters
    status = pod.get("status") or {}
    found = []
    for entry in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        failure = _container_failure(entry)
        if failure is not None:
            found.append(PodFailure(deployment, str(entry.get("name", "")), *failure))
    return min(found, key=lambda f: _RANK.get(f.reason, len(_RANK))) if found else None


def _selects(selector: Mapping[str, str], pod: Mapping[str, Any]) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def deployment_failure(deployment: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> PodFailure | None:
    """Why the pods of `deployment` (those its selector matches) cannot run, or None."""
    name = deployment["metadata"]["name"]
    selector = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    found = [failure for pod in pods if _selects(selector, pod) and (failure := pod_failure(name, pod))]
    return min(found, key=lambda f: (_RANK.get(f.reason, len(_RANK)), f.container)) if found else None


# The volume binder tells a claim it cannot bind without a StorageClass (none named, no default) in a
# Normal Event of this reason, since a matching volume may yet appear; for a broker's claim it will not.
FAILED_BINDING: Final = "FailedBinding"


def unbound_claim(claim: Mapping[str, Any], events: Iterable[Mapping[str, Any]]) -> str | None:
    """Why a Pending claim does not bind: the newest Warning or FailedBinding Event about it (no such
    StorageClass, no default StorageClass, the provisioner's error). None when it is bound or only
    waiting (for its first consumer, for the provisioner): a claim that merely takes its time is no
    failure."""
    metadata = claim.get("metadata") or {}
    if (claim.get("status") or {}).get("phase", "Pending") != "Pending":
        return None
    warnings = [event for event in events
                if (event.get("type") == "Warning" or event.get("reason") == FAILED_BINDING)
                and (event.get("involvedObject") or {}).get("uid") == metadata.get("uid")]
    if not warnings:
        return None
    newest = max(warnings, key=lambda event: str(event.get("lastTimestamp") or event.get("eventTime") or ""))
    return (f"PersistentVolumeClaim {metadata.get('name', '')} cannot bind "
            f"({newest.get('reason', '')}: {str(newest.get('message') or '')[:300]})")
