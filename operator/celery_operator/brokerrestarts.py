"""Did the broker restart since the operator last saw it, why, and what it holds now. Pure.

redis-server picks a new run_id at every start, so a run_id other than the one the status records
means a restart, whatever caused it: a new broker pod (an edit, a drained node, an eviction) or
redis-server exiting inside its container. The cause comes from the broker's pods, the count from
the broker itself once it answers again, so a restart that lost the queue is never silent.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .broker.probe import RedisInstance


def restarted(recorded_run_id: str | None, instance: RedisInstance | None) -> bool:
    """A new run of redis-server since the one recorded; the first one seen is no restart."""
    return recorded_run_id is not None and instance is not None and instance.run_id != recorded_run_id


def restart_cause(pods: Iterable[Mapping[str, Any]]) -> str:
    """Why the broker restarted, from its pods: a container restart in place, or a new pod."""
    running = [pod for pod in pods if not (pod.get("metadata") or {}).get("deletionTimestamp")
               and (pod.get("status") or {}).get("phase") == "Running"]
    if not running:
        return "the broker restarted"
    pod = max(running, key=lambda item: str((item.get("metadata") or {}).get("creationTimestamp") or ""))
    name = (pod.get("metadata") or {}).get("name", "")
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (container.get("lastState") or {}).get("terminated") or {}
        if int(container.get("restartCount") or 0) > 0 and terminated:
            return (f"redis-server exited in pod {name} ({terminated.get('reason') or 'Error'}, exit code "
                    f"{terminated.get('exitCode', '?')}) and the kubelet restarted it")
    return f"the broker runs in a new pod, {name}"


@dataclass(frozen=True)
class BrokerRestart:
    cause: str
    started: datetime.datetime  # when the new run of redis-server started
    messages: int | None  # what the TaskQueue's queues hold now (waiting and reserved); None = unread
    append_only: bool  # it replayed an append-only file: what it held before, it holds now
    without_persistence: str = ""  # why it keeps no append-only file, in the spec's words

    @classmethod
    def of(cls, cause: str, instance: RedisInstance, messages: int | None, now: datetime.datetime,
           without_persistence: str) -> BrokerRestart:
        started = (now - datetime.timedelta(seconds=instance.uptime_seconds)).replace(microsecond=0)
        return cls(cause=cause, started=started, messages=messages, append_only=instance.append_only,
                   without_persistence=without_persistence)

    @property
    def event_type(self) -> str:
        return "Normal" if self.append_only else "Warning"

    def message(self) -> str:
        held = ("its queues could not be read" if self.messages is None
                else f"its queues hold {self.messages} message(s) now")
        if self.append_only:
            return f"{self.cause}; it replayed its append-only file: {held}"
        return (f"{self.cause}; it keeps no append-only file ({self.without_persistence}), so the queue started empty: "
                f"every message it held before the restart is lost; {held}")

    def status(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"time": self.started.strftime("%Y-%m-%dT%H:%M:%SZ"), "cause": self.cause,
                                 "appendOnly": self.append_only}
        if self.messages is not None:
            entry["messages"] = self.messages
        return entry
