"""The one status path of every writer (the TaskQueue reconciler, the scaler, the PeriodicJob
controller): compose the part of the status it owns, compare that part with the live status, write
it only when it changed, and post one Event when its headline condition changes.

Writers apply their part server-side under their own field manager; the status lists are map lists
in the CRDs (conditions by type, queues by name), so the reconciler and the scaler each own their
own entries and fields, and a field a writer stops writing is removed. Pure but for `publish`,
which goes through the Kubernetes port.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .conditions import Condition, conditions_differ, get_condition, remove_condition, set_condition


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class StatusPart:
    """What one writer owns of an object's status."""

    conditions: frozenset[str]  # condition types
    fields: frozenset[str] = frozenset()  # top-level fields besides `conditions` and `queues`
    queue_fields: tuple[str, ...] = ()  # fields of the `queues` entries (by name); () = none

    def owned_conditions(self, status: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [dict(c) for c in status.get("conditions") or [] if c.get("type") in self.conditions]

    def owned_queues(self, status: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The writer's fields of each queue entry; an entry holding none of them is not the writer's."""
        entries = ({key: entry[key] for key in self.queue_fields if key in entry}
                   for entry in status.get("queues") or [])
        return [entry for entry in entries if set(entry) - {"name"}]

    def changed(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
        """Whether `new` (this writer's part) differs from what the live status `old` holds of it."""
        if conditions_differ(self.owned_conditions(old), new.get("conditions")):
            return True
        if self.queue_fields and self.owned_queues(old) != self.owned_queues(new):
            return True
        return any(old.get(key) != new.get(key) for key in self.fields)

    def of(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """What the live `status` holds of this writer's part, shaped as `compose` shapes it."""
        held: dict[str, Any] = {"conditions": self.owned_conditions(status)}
        held.update({key: status[key] for key in self.fields if key in status})
        if self.queue_fields:
            held["queues"] = self.owned_queues(status)
        return held

    def compose(self, previous: Mapping[str, Any], updates: Iterable[Condition], *, generation: int,
                now: datetime.datetime | str, drop: Iterable[str] = (), fields: Mapping[str, Any] | None = None,
                queues: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """The writer's whole part: its conditions as they were, with `updates` set and `drop` removed,
        plus `fields` and `queues` (None values and absent keys are not written, so they go)."""
        current = self.owned_conditions(previous)
        for condition_type in drop:
            current = remove_condition(current, condition_type)
        for condition in updates:
            current = set_condition(current, condition, observed_generation=generation, now=now)
        composed: dict[str, Any] = {"conditions": current}
        composed.update({key: value for key, value in (fields or {}).items() if value is not None})
        if queues is not None:
            composed["queues"] = [dict(entry) for entry in queues]
        return composed


@dataclass(frozen=True)
class Transition:
    """A condition whose status or reason changed between two statuses."""

    before: Mapping[str, Any] | None  # None: the condition is new
    after: Mapping[str, Any]


def transition(old: Mapping[str, Any], new: Mapping[str, Any], condition_type: str) -> Transition | None:
    before = get_condition(old.get("conditions"), condition_type)
    after = get_condition(new.get("conditions"), condition_type)
    if after is None:
        return None
    if before is not None and (before.get("status"), before.get("reason")) == (after["status"], after["reason"]):
        return None
    return Transition(before, after)


@dataclass(frozen=True)
class HeadlineEvents:
    """One Event each time the headline condition changes status or reason: Normal when it became
    True or its reason is progress, else Warning."""

    condition: str
    progress: frozenset[str] = field(default_factory=frozenset)

    def __call__(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> Event | None:
        change = transition(old, new, self.condition)
        if change is None:
            return None
        after = change.after
        calm = after["status"] == "True" or after["reason"] in self.progress
        return Event("Normal" if calm else "Warning", after["reason"], after.get("message", ""))


class EventRule(Protocol):
    def __call__(self, old: Mapping[str, Any], new: Mapping[str, Any], /) -> Event | None: ...


class StatusWriter(Protocol):
    def apply_status(self, body: Mapping[str, Any], status: Mapping[str, Any], field_manager: str) -> Any: ...

    def post_event(self, involved: Mapping[str, Any], event_type: str, reason: str, message: str) -> None: ...


class WriteMemory(Protocol):
    """What a writer last wrote of each object's status (runtime.LastWrites)."""

    def live(self, uid: str, field_manager: str, part: StatusPart,
             status: Mapping[str, Any]) -> Mapping[str, Any]: ...

    def record(self, uid: str, field_manager: str, replaced: Mapping[str, Any],
               written: Mapping[str, Any]) -> None: ...


def publish(kube: StatusWriter, body: Mapping[str, Any], part: StatusPart, new: Mapping[str, Any],
            field_manager: str, events: EventRule, last_writes: WriteMemory) -> bool:
    """Write `new` when it differs from the live status of `body` (or from this writer's last write,
    when `body` was read before it), with the Event `events` finds in the change. Returns whether
    anything was written."""
    uid = body["metadata"]["uid"]
    old = last_writes.live(uid, field_manager, part, body.get("status") or {})
    if not part.changed(old, new):
        return False
    kube.apply_status(body, new, field_manager)
    last_writes.record(uid, field_manager, part.of(old), new)
    event = events(old, new)
    if event is not None:
        kube.post_event(body, event.type, event.reason, event.message)
    return True
