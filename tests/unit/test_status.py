"""The one status path (status.py): a writer's part, compared and composed; the Events of a change;
and that nothing holding a password prints it."""

from __future__ import annotations

import datetime

import pytest

from celery_operator.beat.state import StateLocation
from celery_operator.builders.beat import BeatOptions
from celery_operator.conditions import Condition
from celery_operator.reconcile import BrokerAccess
from celery_operator.runtime import LastWrites
from celery_operator.status import HeadlineEvents, StatusPart, publish

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 11, 24, 8, 0, tzinfo=datetime.timezone.utc)
PART = StatusPart(conditions=frozenset({"Ready"}), fields=frozenset({"observedGeneration", "next"}),
                  queue_fields=("name", "replicas"))
OTHERS = {"conditions": [{"type": "Autoscaling", "status": "True", "reason": "QueueDepthRead", "message": ""}],
          "pending": 3, "queues": [{"name": "a", "pending": 3}]}


def composed(previous: dict, status: str = "True", reason: str = "Ready", **fields: object) -> dict:
    return PART.compose(previous, [Condition("Ready", status, reason, "m")], generation=2, now=NOW,
                        fields={"observedGeneration": 2, **fields}, queues=[{"name": "a", "replicas": 1}])


def test_a_part_holds_only_what_its_writer_owns() -> None:
    mine = composed(OTHERS, next="09:00")
    assert [c["type"] for c in mine["conditions"]] == ["Ready"]
    assert set(mine) == {"conditions", "observedGeneration", "next", "queues"}
    live = {**OTHERS, **mine, "conditions": OTHERS["conditions"] + mine["conditions"],
            "queues": [{"name": "a", "pending": 3, "replicas": 1}]}
    assert not PART.changed(live, composed(live, next="09:00")), "other writers' fields do not count"


def test_a_change_a_field_gone_or_a_condition_flip_is_a_change() -> None:
    live = composed({}, next="09:00")
    assert PART.changed(live, composed(live, next="10:00"))
    assert PART.changed(live, composed(live)), "a field the writer stops writing goes"
    assert PART.changed(live, composed(live, status="False", reason="NameConflict", next="09:00"))


def test_headline_events_on_a_change_of_status_or_reason_only() -> None:
    events = HeadlineEvents("Ready", progress=frozenset({"Starting"}))
    starting = composed({}, status="False", reason="Starting")
    ready = composed(starting)
    conflict = composed(ready, status="False", reason="NameConflict")
    assert (events({}, starting).type, events({}, starting).reason) == ("Normal", "Starting")
    assert (events(starting, ready).type, events(starting, ready).reason) == ("Normal", "Ready")
    assert (events(ready, conflict).type, events(ready, conflict).reason) == ("Warning", "NameConflict")
    assert events(conflict, composed(conflict, status="False", reason="NameConflict")) is None


class Writer:
    def __init__(self) -> None:
        self.statuses: list[dict] = []
        self.events: list[tuple[str, str, str]] = []

    def apply_status(self, body: dict, status: dict, field_manager: str) -> None:
        self.statuses.append(status)

    def post_event(self, involved: dict, event_type: str, reason: str, message: str) -> None:
        self.events.append((event_type, reason, message))


def body(status: dict) -> dict:
    return {"metadata": {"uid": "u1"}, "status": status}


def test_publish_writes_a_change_once_with_its_event() -> None:
    writer, events, last = Writer(), HeadlineEvents("Ready"), LastWrites()
    new = composed({})
    assert publish(writer, body({}), PART, new, "m", events, last)
    assert publish(writer, body(new), PART, composed(new), "m", events, last) is False
    assert len(writer.statuses) == 1 and writer.events == [("Normal", "Ready", "m")]


def test_a_body_read_before_the_last_write_neither_writes_it_again_nor_repeats_its_event() -> None:
    writer, events, last = Writer(), HeadlineEvents("Ready"), LastWrites()
    ready = composed(OTHERS)
    stale = {**OTHERS, "conditions": OTHERS["conditions"] + ready["conditions"]}
    conflict = composed(stale, status="False", reason="NameConflict")
    assert publish(writer, body(stale), PART, conflict, "m", events, last)
    # a second pass whose body was read before that write: the same verdict, its own lastTransitionTime
    later = NOW + datetime.timedelta(seconds=1)
    again = PART.compose(stale, [Condition("Ready", "False", "NameConflict", "m")], generation=2, now=later,
                         fields={"observedGeneration": 2}, queues=[{"name": "a", "replicas": 1}])
    assert publish(writer, body(stale), PART, again, "m", events, last) is False
    assert writer.events == [("Warning", "NameConflict", "m")]
    # a change after it is written, with its Event, stale body or not
    assert publish(writer, body(stale), PART, ready, "m", events, last)
    assert writer.events[-1] == ("Normal", "Ready", "m") and len(writer.statuses) == 2
    # another writer, or another object, keeps its own memory
    assert publish(writer, body(stale), PART, conflict, "other", events, last)
    last.forget("u1")
    assert publish(writer, body(stale), PART, conflict, "m", events, last)


def test_nothing_that_holds_a_password_prints_it() -> None:
    url = "redis://:s3cret-pa55@shop-broker.ns.svc:6379/0"
    for value in (BrokerAccess(url=url, password="s3cret-pa55"), StateLocation(url=url, prefix="p:"),
                  BeatOptions(custom=False, state="managed", state_password="s3cret-pa55")):
        assert "s3cret-pa55" not in repr(value) and "s3cret-pa55" not in str(value), type(value).__name__
