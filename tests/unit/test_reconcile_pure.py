"""The reconciler's pure parts: how the status is composed, when an Event is due, and the
operator's settings from the environment."""

from __future__ import annotations

import datetime

import pytest

from celery_operator import reconcile
from celery_operator.conditions import Condition
from celery_operator.models import ObjectIdentity
from celery_operator.settings import Settings

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 11, 24, 8, 0, tzinfo=datetime.timezone.utc)
LATER = NOW + datetime.timedelta(minutes=5)


IDENTITY = ObjectIdentity(name="shop", namespace="ns", uid="u1", generation=3)


BROKER_OK = Condition.true("BrokerReady", "BrokerReachable", "ok")
WORKERS_OK = Condition.true("WorkersReady", "WorkersAvailable", "ok")


def _verdict(broker=BROKER_OK, workers=WORKERS_OK, blocked=None, queues=None) -> reconcile.Verdict:
    return reconcile.Verdict(broker=broker, workers=workers, blocked=blocked,
                             queues=queues if queues is not None else [
                                 {"name": "a", "replicas": 2, "readyReplicas": 1},
                                 {"name": "b", "replicas": 1, "readyReplicas": 1}])


def _conditions(status: dict) -> dict[str, dict]:
    return {c["type"]: c for c in status["conditions"]}


def test_status_carries_ready_printer_fields_and_generation() -> None:
    status = reconcile.compose_status({"status": {}}, IDENTITY, _verdict(), NOW)
    conditions = _conditions(status)
    assert {t: c["status"] for t, c in conditions.items()} == {"BrokerReady": "True", "WorkersReady": "True",
                                                                 "Ready": "True"}
    assert all(c["observedGeneration"] == 3 for c in conditions.values())
    assert (status["observedGeneration"], status["brokerSecretName"]) == (3, "shop-broker")
    assert (status["workers"], status["queueCount"]) == ("2/3", 2)
    assert "pending" not in status, "the scaler owns pending"


def test_ready_is_false_with_the_first_failing_reason() -> None:
    waiting = Condition.false("WorkersReady", "WorkersNotReady", "waiting")
    status = reconcile.compose_status({}, IDENTITY, _verdict(workers=waiting), NOW)
    assert (_conditions(status)["Ready"]["status"], _conditions(status)["Ready"]["reason"]) == ("False",
                                                                                                 "WorkersNotReady")
    blocked = reconcile.Blocked("NameConflict", "Deployment shop-worker-a is not ours")
    status = reconcile.compose_status({}, IDENTITY, reconcile.Verdict(broker=None, workers=None, blocked=blocked), NOW)
    assert _conditions(status)["Ready"]["reason"] == "NameConflict"
    assert set(_conditions(status)) == {"Ready"}, "a blocked pass claims nothing about broker or workers"


def test_a_settled_status_is_not_rewritten_and_keeps_transition_times() -> None:
    first = reconcile.compose_status({}, IDENTITY, _verdict(), NOW)
    second = reconcile.compose_status({"status": first}, IDENTITY, _verdict(), LATER)
    assert not reconcile.STATUS.changed(first, second)
    assert _conditions(second)["Ready"]["lastTransitionTime"] == "2026-11-24T08:00:00Z"


def test_only_the_reconcilers_fields_are_composed_and_compared() -> None:
    scaler_condition = {"type": "Autoscaling", "status": "True", "reason": "Scaling", "message": "",
                        "lastTransitionTime": "2026-11-24T07:00:00Z", "observedGeneration": 3}
    mine = reconcile.compose_status({}, IDENTITY, _verdict(), NOW)
    live = {**mine, "pending": 40, "conditions": [*mine["conditions"], scaler_condition],
            "queues": [{**q, "pending": 40, "inFlight": 2, "lastScaleTime": "t"} for q in mine["queues"]]}
    again = reconcile.compose_status({"status": live}, IDENTITY, _verdict(), LATER)
    assert "Autoscaling" not in _conditions(again)
    assert all(set(q) == {"name", "replicas", "readyReplicas"} for q in again["queues"])
    assert not reconcile.STATUS.changed(live, again), "the scaler's fields are not the reconciler's business"


def test_a_blocked_pass_restates_what_it_owned() -> None:
    ready = reconcile.compose_status({}, IDENTITY, _verdict(), NOW)
    blocked = reconcile.compose_status({"status": ready}, IDENTITY, reconcile.Verdict(
        broker=None, workers=None, blocked=reconcile.Blocked("InvalidSpec", "spec.queues[0].name: bad")), LATER)
    assert _conditions(blocked)["BrokerReady"] == _conditions(ready)["BrokerReady"]
    assert (blocked["queues"], blocked["workers"]) == (ready["queues"], ready["workers"])
    assert _conditions(blocked)["Ready"]["reason"] == "InvalidSpec"


def _event(old: dict, new: dict) -> tuple[str, str, str] | None:
    event = reconcile.EVENTS(old, new)
    return None if event is None else (event.type, event.reason, event.message)


def test_one_event_per_change_of_ready() -> None:
    ready = reconcile.compose_status({}, IDENTITY, _verdict(), NOW)
    conflict = reconcile.compose_status({"status": ready}, IDENTITY, reconcile.Verdict(
        broker=None, workers=None, blocked=reconcile.Blocked("NameConflict", "x")), LATER)
    assert _event({}, ready) == ("Normal", "Ready", ready["conditions"][2]["message"])
    assert _event(ready, conflict)[:2] == ("Warning", "NameConflict")
    assert _event(conflict, conflict) is None
    broker_starting = Condition.false("BrokerReady", "BrokerStarting", "waiting")
    starting = reconcile.compose_status({}, IDENTITY, _verdict(broker=broker_starting), NOW)
    assert _event({}, starting)[:2] == ("Normal", "BrokerStarting"), "progress is no warning"


def test_settings_from_environment() -> None:
    settings = Settings.from_environment({"CELERY_OPERATOR_RESYNC_SECONDS": "2.5",
                                                   "CELERY_OPERATOR_METRICS_PORT": "9100", "UNRELATED": "x"})
    assert (settings.resync_seconds, settings.metrics_port, settings.broker_timeout_seconds) == (2.5, 9100, 2.0)
    with pytest.raises(ValueError, match="CELERY_OPERATOR_RESYNC_SECONDS"):
        Settings.from_environment({"CELERY_OPERATOR_RESYNC_SECONDS": "soon"})
    with pytest.raises(ValueError, match="CELERY_OPERATOR_BROKER_TIMEOUT_SECONDS"):
        Settings.from_environment({"CELERY_OPERATOR_BROKER_TIMEOUT_SECONDS": "0"})
