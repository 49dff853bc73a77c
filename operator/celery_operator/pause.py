"""Pausing a TaskQueue: the annotation `celery-operator.dev/reconcile: paused` stops every write of
the operator to the TaskQueue's children and to its status, but for the Paused condition that
says so, until the annotation goes. For maintenance, and for an operator upgrade the user wants to
stage one TaskQueue at a time. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import naming
from .conditions import Condition, get_condition
from .reasons import Paused
from .status import Event


def annotation(body: Mapping[str, Any]) -> str | None:
    """The value of celery-operator.dev/reconcile, None without it."""
    return ((body.get("metadata") or {}).get("annotations") or {}).get(naming.ANNOTATION_RECONCILE)


def is_paused(body: Mapping[str, Any]) -> bool:
    return annotation(body) == naming.RECONCILE_PAUSED


def paused_condition(body: Mapping[str, Any]) -> Condition | None:
    """The Paused condition the annotation calls for; None without the annotation."""
    value = annotation(body)
    if value is None:
        return None
    if value == naming.RECONCILE_PAUSED:
        return Condition.true(Paused.TYPE, Paused.PAUSED,
                              f"annotation {naming.ANNOTATION_RECONCILE}: {naming.RECONCILE_PAUSED}: the operator "
                              "neither changes, scales nor repairs this TaskQueue's children, nor updates its "
                              "status, until the annotation is removed")
    return Condition.false(Paused.TYPE, Paused.INVALID_ANNOTATION,
                           f"annotation {naming.ANNOTATION_RECONCILE} is {value!r}: the only value understood is "
                           f"{naming.RECONCILE_PAUSED!r}; the operator goes on reconciling this TaskQueue")


def pause_event(old: Mapping[str, Any], new: Mapping[str, Any]) -> Event | None:
    """The Event of a change of the Paused condition between two statuses, None without one."""
    before = get_condition(old.get("conditions"), Paused.TYPE)
    after = get_condition(new.get("conditions"), Paused.TYPE)
    if after is None:
        if before is not None and before.get("status") == "True":
            return Event("Normal", Paused.RESUMED,
                         f"annotation {naming.ANNOTATION_RECONCILE} removed: the operator reconciles and scales "
                         "this TaskQueue again")
        return None
    if before is not None and (before.get("status"), before.get("reason")) == (after["status"], after["reason"]):
        return None
    return Event("Normal" if after["status"] == "True" else "Warning", after["reason"], after.get("message", ""))
