"""Conditions shaped like metav1.Condition, as typed values and as the dicts a status holds. Pure.

A `Condition` is what one check concludes: type, status ("True"/"False"/"Unknown"), a CamelCase
reason (reasons.py) and a message. `set_condition` turns it into the status dict, adding
lastTransitionTime (RFC 3339, UTC) and observedGeneration; lastTransitionTime moves only when the
status flips, so a steady state rewrites nothing. Functions never mutate their input.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final, Literal

ConditionStatus = Literal["True", "False", "Unknown"]

STATUSES: Final = ("True", "False", "Unknown")
MAX_MESSAGE_LENGTH: Final = 32768
_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")

# What makes two conditions different; lastTransitionTime follows from status.
_MATERIAL_FIELDS: Final = ("status", "reason", "message", "observedGeneration")


@dataclass(frozen=True)
class Condition:
    type: str
    status: ConditionStatus
    reason: str
    message: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"condition status must be one of {STATUSES}, got {self.status!r}")
        if not _REASON.match(self.reason):
            raise ValueError(f"condition reason must be CamelCase, got {self.reason!r}")

    @classmethod
    def true(cls, type: str, reason: str, message: str) -> Condition:  # noqa: A002 - the metav1 field name
        return cls(type, "True", reason, message)

    @classmethod
    def false(cls, type: str, reason: str, message: str) -> Condition:  # noqa: A002
        return cls(type, "False", reason, message)

    @classmethod
    def unknown(cls, type: str, reason: str, message: str) -> Condition:  # noqa: A002
        return cls(type, "Unknown", reason, message)

    @property
    def is_true(self) -> bool:
        return self.status == "True"


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes metav1.Time."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def get_condition(conditions: Iterable[Mapping[str, Any]] | None, condition_type: str) -> dict[str, Any] | None:
    for condition in conditions or ():
        if condition.get("type") == condition_type:
            return dict(condition)
    return None


def set_condition(conditions: Sequence[Mapping[str, Any]] | None, condition: Condition, *,
                  observed_generation: int, now: datetime | str) -> list[dict[str, Any]]:
    """A new condition list with `condition` set; other conditions keep their order and content."""
    previous = get_condition(conditions, condition.type)
    if previous is not None and previous.get("status") == condition.status and previous.get("lastTransitionTime"):
        transition_time = previous["lastTransitionTime"]
    else:
        transition_time = now if isinstance(now, str) else format_time(now)
    updated = {
        "type": condition.type,
        "status": condition.status,
        "reason": condition.reason,
        "message": condition.message[:MAX_MESSAGE_LENGTH],
        "lastTransitionTime": transition_time,
        "observedGeneration": observed_generation,
    }
    result: list[dict[str, Any]] = []
    replaced = False
    for existing in conditions or ():
        if existing.get("type") == condition.type:
            result.append(updated)
            replaced = True
        else:
            result.append(copy.deepcopy(dict(existing)))
    if not replaced:
        result.append(updated)
    return result


def remove_condition(conditions: Sequence[Mapping[str, Any]] | None, condition_type: str) -> list[dict[str, Any]]:
    """A new list without `condition_type` (e.g. BeatReady once no PeriodicJob refers to the TaskQueue)."""
    return [copy.deepcopy(dict(c)) for c in conditions or () if c.get("type") != condition_type]


def conditions_differ(old: Sequence[Mapping[str, Any]] | None, new: Sequence[Mapping[str, Any]] | None) -> bool:
    """True when a status patch is worth writing: a type added or removed, or a material field changed.

    Order does not matter; lastTransitionTime alone does not count (it only moves with status).
    """
    old_by_type = {c.get("type"): c for c in old or ()}
    new_by_type = {c.get("type"): c for c in new or ()}
    if old_by_type.keys() != new_by_type.keys():
        return True
    return any(old_by_type[t].get(f) != new_by_type[t].get(f) for t in new_by_type for f in _MATERIAL_FIELDS)
