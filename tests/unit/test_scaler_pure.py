"""The scaler's status: its own fields only, written when they change, one Event per broker outage."""

from __future__ import annotations

import asyncio

import pytest

from celery_operator import scaler
from celery_operator.models import ObjectIdentity, TaskQueueSpec

pytestmark = pytest.mark.unit

IDENTITY = ObjectIdentity(name="shop", namespace="ns", uid="u1", generation=2)
SPEC = TaskQueueSpec.parse({"image": "app:1", "app": "proj", "queues": [
    {"name": "fast", "autoscaling": {"maxReplicas": 5}}, {"name": "slow", "replicas": 1}]})
FIXED_ONLY = TaskQueueSpec.parse({"image": "app:1", "app": "proj", "queues": [{"name": "slow", "replicas": 1}]})
OUTCOMES = [scaler.QueueOutcome("fast", pending=7, in_flight=2, desired=5, last_scale_time="t1", restarts=2,
                                 last_restart={"pod": "p", "reason": "OOMKilled", "exitCode": 137, "inFlight": 1}),
            scaler.QueueOutcome("slow", pending=1, in_flight=0, desired=1, last_scale_time=None)]


def _condition(status: dict) -> dict:
    [condition] = status["conditions"]
    return condition


def test_status_has_per_queue_figures_and_the_total() -> None:
    status = scaler.compose_scaler_status({}, IDENTITY, SPEC, OUTCOMES, unreadable=None)
    assert status["queues"] == [
        {"name": "fast", "pending": 7, "inFlight": 2, "desiredReplicas": 5, "restarts": 2, "lastScaleTime": "t1",
         "lastRestart": {"pod": "p", "reason": "OOMKilled", "exitCode": 137, "inFlight": 1}},
        {"name": "slow", "pending": 1, "inFlight": 0, "desiredReplicas": 1, "restarts": 0}]
    assert status["pending"] == 8
    assert (_condition(status)["type"], _condition(status)["status"]) == ("Autoscaling", "True")
    assert _condition(status)["observedGeneration"] == 2


def test_no_autoscaling_condition_without_autoscaled_queues() -> None:
    status = scaler.compose_scaler_status({}, IDENTITY, FIXED_ONLY, OUTCOMES[1:], unreadable=None)
    assert status["conditions"] == []


def test_broker_outage_is_false_only_after_the_broker_once_answered() -> None:
    starting = scaler.compose_scaler_status({}, IDENTITY, SPEC, OUTCOMES, "refused", ever_read=False)
    assert (_condition(starting)["status"], _condition(starting)["reason"]) == ("Unknown", "WaitingForBroker")
    outage = scaler.compose_scaler_status({}, IDENTITY, SPEC, OUTCOMES, "refused", ever_read=True)
    assert (_condition(outage)["status"], _condition(outage)["reason"]) == ("False", "BrokerUnavailable")
    assert "held" in _condition(outage)["message"]


def test_unchanged_figures_write_nothing_and_others_fields_do_not_count() -> None:
    status = scaler.compose_scaler_status({}, IDENTITY, SPEC, OUTCOMES, unreadable=None)
    live = {**status, "workers": "3/4", "conditions": [*status["conditions"], {"type": "Ready", "status": "True"}],
            "queues": [{**q, "replicas": 3, "readyReplicas": 3} for q in status["queues"]]}
    again = scaler.compose_scaler_status({"status": live}, IDENTITY, SPEC, OUTCOMES, unreadable=None)
    assert not scaler.STATUS.changed(live, again)
    busier = [scaler.QueueOutcome("fast", 9, 2, 5, "t1"), OUTCOMES[1]]
    assert scaler.STATUS.changed(live, scaler.compose_scaler_status(
        {"status": live}, IDENTITY, SPEC, busier, unreadable=None))


def test_one_event_when_the_broker_goes_and_one_when_it_comes_back() -> None:
    reading = scaler.compose_scaler_status({}, IDENTITY, SPEC, OUTCOMES, unreadable=None)
    down = scaler.compose_scaler_status({"status": reading}, IDENTITY, SPEC, OUTCOMES, "refused")
    back = scaler.compose_scaler_status({"status": down}, IDENTITY, SPEC, OUTCOMES, unreadable=None)
    starting = scaler.compose_scaler_status({}, IDENTITY, SPEC, OUTCOMES, "refused", ever_read=False)
    assert scaler.outage_events({}, reading) is None, "first reading: nothing to announce"
    assert (scaler.outage_events(reading, down).type, scaler.outage_events(reading, down).reason) == (
        "Warning", "BrokerUnavailable")
    assert scaler.outage_events(down, down) is None
    assert (scaler.outage_events(down, back).type, scaler.outage_events(down, back).reason) == (
        "Normal", "BrokerAvailable")
    assert scaler.outage_events({}, starting) is None, "a broker still starting is no outage"
    assert scaler.outage_events({"conditions": starting["conditions"]}, reading) is None


class _Stopped:
    """kopf's DaemonStopped as the daemon uses it: truthy once stopped, `await wait(seconds)`."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def __bool__(self) -> bool:
        return self.event.is_set()

    async def wait(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.event.wait(), seconds)
        except TimeoutError:
            pass
        return self.event.is_set()


async def _slept(poll: float, wake_after: float | None = None, stop_after: float | None = None,
                 ticked_ago: float = 10.0) -> float:
    loop = asyncio.get_running_loop()
    stopped, woken = _Stopped(), asyncio.Event()
    if wake_after is not None:
        loop.call_later(wake_after, woken.set)
    if stop_after is not None:
        loop.call_later(stop_after, stopped.event.set)
    started = loop.time()
    await scaler.sleep_until_next_tick(stopped, woken, poll, ticked_at=started - ticked_ago)
    return loop.time() - started


def test_the_scaler_sleeps_a_poll_interval_unless_woken_or_stopped() -> None:
    assert 0.3 <= asyncio.run(_slept(0.3)) < 0.6
    assert asyncio.run(_slept(5, wake_after=0.05)) < 1.0, "a message on a queue at zero ends the sleep"
    assert asyncio.run(_slept(5, stop_after=0.05)) < 1.0, "a stopped daemon ends the sleep"


def test_wake_ups_come_no_sooner_than_the_gap_after_the_last_tick() -> None:
    slept = asyncio.run(_slept(5, wake_after=0.0, ticked_ago=0.0))
    assert scaler.WAKE_GAP_SECONDS - 0.02 <= slept < 1.0, "a flood of messages cannot tick back to back"


def test_an_unsettled_taskqueue_is_ticked_again_soon() -> None:
    body = {"spec": {"image": "app:1", "app": "proj", "queues": [{"name": "q"}],
                     "autoscaling": {"pollIntervalSeconds": 30}}}
    assert scaler.next_tick_in(body, settled=True) == 30
    assert scaler.next_tick_in(body, settled=False) == scaler.UNSETTLED_RETRY_SECONDS
