"""The scaler's status: its own fields only, written when they change, one Event per broker outage."""

from __future__ import annotations

import pytest

from celery_operator import autoscaler
from celery_operator.models import ObjectIdentity, TaskQueueSpec

pytestmark = pytest.mark.unit

IDENTITY = ObjectIdentity(name="shop", namespace="ns", uid="u1", generation=2)
SPEC = TaskQueueSpec.parse({"image": "app:1", "app": "proj", "queues": [
    {"name": "fast", "autoscaling": {"maxReplicas": 5}}, {"name": "slow", "replicas": 1}]})
FIXED_ONLY = TaskQueueSpec.parse({"image": "app:1", "app": "proj", "queues": [{"name": "slow", "replicas": 1}]})
OUTCOMES = [autoscaler.QueueOutcome("fast", pending=7, in_flight=2, desired=5, last_scale_time="t1"),
            autoscaler.QueueOutcome("slow", pending=1, in_flight=0, desired=1, last_scale_time=None)]


def _condition(status: dict) -> dict:
    [condition] = status["conditions"]
    return condition


def test_status_has_per_queue_figures_and_the_total() -> None:
    status = autoscaler.compose_scaler_status({}, IDENTITY, SPEC, OUTCOMES, unreadable=None)
    assert status["queues"] == [
        {"name": "fast", "pending": 7, "inFlight": 2, "desiredReplicas": 5, "lastScaleTime": "t1"},
        {"name": "slow", "pending": 1, "inFlight": 0, "desiredReplicas": 1}]
    assert status["pending"] == 8
    assert (_condition(status)["type"], _condition(status)["status"]) == ("Autoscaling", "True")
    assert _condition(status)["observedGeneration"] == 2


def test_no_autoscaling_condition_without_autoscaled_queues() -> None:
    status = autoscaler.compose_scaler_status({}, IDENTITY, FIXED_ONLY, OUTCOMES[1:], unreadable=None)
    assert status["conditions"] == []


def test_broker_outage_is_false_only_after_the_broker_once_answered() -> None:
    starting = autoscaler.compose_scaler_status({}, IDENTITY, SPEC, OUTCOMES, "refused", ever_read=False)
    assert (_condition(starting)["status"], _condition(starting)["reason"]) == ("Unknown", "WaitingForBroker")
    outage = autoscaler.compose_scaler_status({}, IDENTITY, SPEC, OUTCOMES, "refused", ever_read=True)
    assert (_condition(outage)["status"], _condition(outage)["reason"]) == ("False", "BrokerUnavailable")
    assert "held" in _condition(outage)["message"]


def test_unchanged_figures_write_nothing_and_others_fields_do_not_count() -> None:
    status = autoscaler.compose_scaler_status({}, IDENTITY, SPEC, OUTCOMES, unreadable=None)
    live = {**status, "workers": "3/4", "conditions": [*status["conditions"], {"type": "Ready", "status": "True"}],
            "queues": [{**q, "replicas": 3, "readyReplicas": 3} for q in status["queues"]]}
    again = autoscaler.compose_scaler_status({"status": live}, IDENTITY, SPEC, OUTCOMES, unreadable=None)
    assert not autoscaler.scaler_status_changed(live, again)
    busier = [autoscaler.QueueOutcome("fast", 9, 2, 5, "t1"), OUTCOMES[1]]
    assert autoscaler.scaler_status_changed(live, autoscaler.compose_scaler_status(
        {"status": live}, IDENTITY, SPEC, busier, unreadable=None))


def test_one_event_when_the_broker_goes_and_one_when_it_comes_back() -> None:
    reading = autoscaler.compose_scaler_status({}, IDENTITY, SPEC, OUTCOMES, unreadable=None)
    down = autoscaler.compose_scaler_status({"status": reading}, IDENTITY, SPEC, OUTCOMES, "refused")
    back = autoscaler.compose_scaler_status({"status": down}, IDENTITY, SPEC, OUTCOMES, unreadable=None)
    starting = autoscaler.compose_scaler_status({}, IDENTITY, SPEC, OUTCOMES, "refused", ever_read=False)
    assert autoscaler._autoscaling_event({}, reading) is None, "first reading: nothing to announce"
    assert autoscaler._autoscaling_event(reading, down)[:2] == ("Warning", "BrokerUnavailable")
    assert autoscaler._autoscaling_event(down, down) is None
    assert autoscaler._autoscaling_event(down, back)[:2] == ("Normal", "BrokerAvailable")
    assert autoscaler._autoscaling_event({}, starting) is None, "a broker still starting is no outage"
    assert autoscaler._autoscaling_event({"conditions": starting["conditions"]}, reading) is None
