from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from celery_operator import conditions

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 24, 8, 0, 0, tzinfo=timezone.utc)
T1 = T0 + timedelta(minutes=5)


def ready(existing, status, *, reason="AllReady", message="ok", generation=1, now=T0):
    return conditions.set_condition(existing, conditions.Condition("Ready", status, reason, message),
                                    observed_generation=generation, now=now)


def test_new_condition_has_every_field() -> None:
    assert ready(None, "True") == [{
        "type": "Ready", "status": "True", "reason": "AllReady", "message": "ok",
        "lastTransitionTime": "2026-11-24T08:00:00Z", "observedGeneration": 1,
    }]


def test_transition_time_stays_while_status_stays() -> None:
    first = ready(None, "False", reason="BrokerUnreachable", message="a")
    second = ready(first, "False", reason="WorkersNotReady", message="b", generation=2, now=T1)
    (condition,) = second
    assert condition["lastTransitionTime"] == "2026-11-24T08:00:00Z"
    assert condition["reason"] == "WorkersNotReady"
    assert condition["message"] == "b"
    assert condition["observedGeneration"] == 2


def test_transition_time_moves_on_a_flip() -> None:
    first = ready(None, "False")
    (condition,) = ready(first, "True", now=T1)
    assert condition["lastTransitionTime"] == "2026-11-24T08:05:00Z"
    assert condition["status"] == "True"


def test_set_condition_returns_a_new_list_and_keeps_others() -> None:
    broker = conditions.set_condition(None, conditions.Condition("BrokerReady", "True", "Reachable", ""),
                                      observed_generation=1, now=T0)
    before = [dict(c) for c in broker]
    both = ready(broker, "True")
    assert broker == before  # input untouched
    assert [c["type"] for c in both] == ["BrokerReady", "Ready"]
    both[0]["status"] = "False"
    assert broker[0]["status"] == "True"  # no aliasing


def test_replacing_keeps_position() -> None:
    existing = ready(None, "True")
    existing = conditions.set_condition(existing, conditions.Condition("WorkersReady", "True", "Available", ""),
                                        observed_generation=1, now=T0)
    updated = ready(existing, "False", reason="WorkersNotReady", now=T1)
    assert [c["type"] for c in updated] == ["Ready", "WorkersReady"]
    assert updated[0]["status"] == "False"


def test_string_now_is_used_verbatim() -> None:
    (condition,) = ready(None, "Unknown", now="2026-01-01T00:00:00Z")
    assert condition["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_naive_datetime_is_taken_as_utc() -> None:
    assert conditions.format_time(datetime(2026, 11, 24, 8, 0, 0, 123456)) == "2026-11-24T08:00:00Z"


@pytest.mark.parametrize("reason", ["not camel", "", "1Bad", "Trailing-"])
def test_reason_must_be_camel_case(reason: str) -> None:
    with pytest.raises(ValueError):
        ready(None, "True", reason=reason)


def test_status_must_be_true_false_or_unknown() -> None:
    with pytest.raises(ValueError):
        ready(None, "true")  # type: ignore[arg-type]


def test_get_condition_and_typed_values() -> None:
    existing = ready(None, "True")
    assert conditions.get_condition(existing, "Ready")["reason"] == "AllReady"  # type: ignore[index]
    assert conditions.get_condition(existing, "BeatReady") is None
    assert conditions.Condition.true("Ready", "Ready", "ok").is_true
    assert not conditions.Condition.false("Ready", "NameConflict", "x").is_true
    assert conditions.Condition.unknown("Autoscaling", "WaitingForBroker", "").status == "Unknown"


def test_remove_condition() -> None:
    existing = ready(None, "True")
    existing = conditions.set_condition(existing, conditions.Condition("BeatReady", "True", "Running", ""),
                                        observed_generation=1, now=T0)
    assert [c["type"] for c in conditions.remove_condition(existing, "BeatReady")] == ["Ready"]


def test_conditions_differ() -> None:
    base = ready(None, "True")
    assert not conditions.conditions_differ(base, ready(base, "True", now=T1))
    assert not conditions.conditions_differ(base, list(reversed(base)))
    assert conditions.conditions_differ(base, ready(base, "True", message="changed"))
    assert conditions.conditions_differ(base, ready(base, "True", generation=2))
    assert conditions.conditions_differ(base, ready(base, "False"))
    assert conditions.conditions_differ(base, [])
    assert conditions.conditions_differ(None, base)
    assert not conditions.conditions_differ(None, [])


def test_long_messages_are_truncated() -> None:
    (condition,) = ready(None, "False", message="x" * 40000)
    assert len(condition["message"]) == conditions.MAX_MESSAGE_LENGTH
