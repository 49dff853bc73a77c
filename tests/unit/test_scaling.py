"""The scaling decision, rule by rule, then as properties over random closed-loop runs."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from celery_operator.scaling_policy import (
    Decision,
    History,
    Observation,
    Sample,
    ScalingPolicy,
    Unknown,
    decide,
    growth_to_scale_up,
    raw_desired,
)
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.unit

POLICY = ScalingPolicy(min_replicas=0, max_replicas=20, target_tasks_per_replica=2, scale_down_stabilization_seconds=60)


def observed(pending: int = 0, in_flight: int = 0, busy: int = 0) -> Observation:
    return Observation(pending=pending, in_flight=in_flight, busy_workers=busy)


def run(
    ticks: list[tuple[float, Observation | Unknown]],
    policy: ScalingPolicy = POLICY,
    current: int = 0,
    history: History | None = None,
) -> list[Decision]:
    """Closed loop: each decision's replicas become the next tick's current replicas."""
    history = history or History()
    decisions = []
    for now, observation in ticks:
        decision = decide(observation, policy, history, current, now)
        decisions.append(decision)
        history, current = decision.history, decision.replicas
    return decisions


def warmed(current: int, policy: ScalingPolicy = POLICY, at: float = 1000.0) -> History:
    """A history that has observed a full window in which nothing higher than `current` was desired."""
    return History(samples=(), observed_since=at - policy.window - 1, last_busy=None)


# --- rule 1: desired -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pending", "in_flight", "target", "expected"),
    [(0, 0, 2, 0), (1, 0, 2, 1), (2, 0, 2, 1), (3, 0, 2, 2), (40, 6, 2, 23), (0, 5, 5, 1), (7, 0, 1, 7)],
)
def test_desired_is_ceiling_of_work_over_target(pending: int, in_flight: int, target: int, expected: int) -> None:
    policy = ScalingPolicy(0, 100, target, 60)
    decision = decide(observed(pending, in_flight), policy, History(), current_replicas=0, now=0.0)
    assert decision.desired == expected


def test_desired_is_capped_at_max_and_says_so() -> None:
    decision = decide(observed(40, 6), POLICY, History(), current_replicas=3, now=0.0)
    assert decision.desired == 20
    assert decision.replicas == 20
    assert decision.reason == "pending 40 + inFlight 6 over target 2 → 23, capped at max 20"


def test_desired_is_raised_to_min_and_says_so() -> None:
    policy = dataclasses.replace(POLICY, min_replicas=3)
    decision = decide(observed(1, 0), policy, History(), current_replicas=0, now=0.0)
    assert decision.desired == 3
    assert decision.replicas == 3
    assert decision.reason == "pending 1 + inFlight 0 over target 2 → 1, raised to min 3"


def test_raw_desired_returns_unclamped_and_clamped() -> None:
    assert raw_desired(46, POLICY) == (23, 20)
    assert raw_desired(0, dataclasses.replace(POLICY, min_replicas=2)) == (0, 2)


# --- rule 2: scale up at once --------------------------------------------------------------------


def test_scale_up_is_immediate_even_right_after_a_scale_down_window_started() -> None:
    decisions = run([(0.0, observed(2)), (2.0, observed(30)), (4.0, observed(100))], current=1)
    assert [d.replicas for d in decisions] == [1, 15, 20]
    assert [d.direction for d in decisions] == ["none", "up", "up"]


def test_from_zero_on_the_first_tick_that_sees_a_message() -> None:
    history = warmed(0)
    decision = decide(observed(pending=1), POLICY, history, current_replicas=0, now=1000.0)
    assert decision.replicas == 1
    assert decision.changed


def test_from_zero_counts_in_flight_too() -> None:
    decision = decide(observed(in_flight=1), POLICY, History(), current_replicas=0, now=0.0)
    assert decision.replicas == 1


# --- rule 3: stabilized scale-down ---------------------------------------------------------------


def test_no_scale_down_within_the_window_after_a_higher_desire() -> None:
    # 10 wanted at t=0, then only 2: held at 10 through t=60 (inclusive), down to 1 after.
    ticks = [(0.0, observed(20)), (30.0, observed(in_flight=2)), (60.0, observed(in_flight=2)),
             (60.5, observed(in_flight=2))]
    decisions = run(ticks, current=10, history=warmed(10, at=0.0))
    assert [d.desired for d in decisions] == [10, 1, 1, 1]
    assert [d.replicas for d in decisions] == [10, 10, 10, 1]
    assert decisions[1].reason.endswith("holding 10 (highest desired in the last 60s)")


def test_scale_down_goes_to_the_highest_desire_left_in_the_window() -> None:
    ticks = [(0.0, observed(20)), (40.0, observed(in_flight=12)), (61.0, observed(in_flight=2)),
             (101.0, observed(in_flight=2))]
    decisions = run(ticks, current=10, history=warmed(10, at=0.0))
    assert [d.replicas for d in decisions] == [10, 10, 6, 1]


def test_stabilization_never_scales_up() -> None:
    # Someone scaled the Deployment down to 3 by hand; the window remembers 10 but must not restore it.
    history = History(samples=(Sample(990.0, 10),), observed_since=0.0)
    decision = decide(observed(2), POLICY, history, current_replicas=3, now=1000.0)
    assert decision.replicas == 3
    assert decision.direction == "none"


def test_window_zero_scales_down_at_once() -> None:
    policy = dataclasses.replace(POLICY, scale_down_stabilization_seconds=0)
    decisions = run([(0.0, observed(20)), (2.0, observed(in_flight=2)), (4.0, observed(0))], policy=policy,
                    current=1)
    assert [d.replicas for d in decisions] == [10, 1, 0]


def test_no_scale_down_before_a_whole_window_has_been_observed() -> None:
    # Operator (re)start: it does not know what was desired before, so current stands for a window.
    decisions = run([(0.0, observed(in_flight=2)), (59.0, observed(in_flight=2)), (60.0, observed(in_flight=2))],
                    current=8)
    assert [d.replicas for d in decisions] == [8, 8, 1]
    assert decisions[0].reason.endswith("holding 8 until 60s have been observed")


def test_history_is_pruned_to_the_window() -> None:
    decisions = run([(float(t), observed(2)) for t in range(0, 200, 2)], current=1)
    samples = decisions[-1].history.samples
    assert samples[0].time >= 198 - 60
    assert samples[-1] == Sample(198.0, 1)
    assert len(samples) == 31


def test_history_is_immutable_and_the_input_is_untouched() -> None:
    history = History()
    decision = decide(observed(4), POLICY, history, current_replicas=0, now=5.0)
    assert history == History()
    assert decision.history.samples == (Sample(5.0, 2),)
    assert decision.history.observed_since == 5.0
    assert decision.history.last_busy == 5.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.history.samples = ()  # type: ignore[misc]


# --- rule 4: busy workers ------------------------------------------------------------------------


def test_never_below_busy_workers() -> None:
    decision = decide(observed(0, 3, busy=3), POLICY, warmed(6), current_replicas=6, now=1000.0)
    assert decision.desired == 2
    assert decision.replicas == 3
    assert decision.reason.endswith("keeping 3 busy workers")


def test_no_scale_down_while_messages_wait() -> None:
    # A worker seen idle with messages waiting is busy a few milliseconds later: the backlog drains
    # first, at the replicas there are (and it never scales up by itself).
    policy = dataclasses.replace(POLICY, scale_down_stabilization_seconds=0)
    decision = decide(observed(pending=4, in_flight=2), policy, warmed(8), current_replicas=8, now=1000.0)
    assert (decision.desired, decision.replicas) == (3, 8)
    assert decision.reason.endswith("holding 8 while 4 messages wait")
    assert decide(observed(pending=4), policy, warmed(1), current_replicas=1, now=1000.0).replicas == 2
    assert decide(observed(in_flight=2), policy, warmed(8), current_replicas=8, now=1000.0).replicas == 1


def test_busy_workers_never_scale_up_by_themselves() -> None:
    # Heartbeats may still name a pod that is terminating: more busy than current is not a reason to grow.
    decision = decide(observed(0, 5, busy=5), POLICY, warmed(2), current_replicas=2, now=1000.0)
    assert decision.replicas == 3  # from desired ceil(5/2), not from busy=5
    decision = decide(observed(0, 1, busy=5), POLICY, warmed(2), current_replicas=2, now=1000.0)
    assert decision.replicas == 2


def test_max_wins_over_busy_workers() -> None:
    # maxReplicas lowered to 2 while 5 workers are busy: the user's limit stands (warm shutdown finishes tasks).
    policy = dataclasses.replace(POLICY, max_replicas=2)
    decision = decide(observed(0, 5, busy=5), policy, warmed(5), current_replicas=5, now=1000.0)
    assert decision.replicas == 2


# --- rule 5: zero --------------------------------------------------------------------------------


def test_to_zero_only_after_a_whole_idle_window() -> None:
    ticks = [(0.0, observed(1)), (2.0, observed(0))] + [(float(t), observed(0)) for t in range(4, 66, 2)]
    decisions = run(ticks, current=1, history=warmed(1, at=0.0))
    by_time = {t: d.replicas for (t, _), d in zip(ticks, decisions)}
    assert all(by_time[t] == 1 for t in by_time if t <= 60.0)  # work seen at t=0: a full window from then
    assert by_time[62.0] == 0
    assert decisions[-1].reason == "pending 0 + inFlight 0 over target 2 → 0"


def test_not_to_zero_when_min_replicas_is_positive() -> None:
    policy = dataclasses.replace(POLICY, min_replicas=1)
    decisions = run([(float(t), observed(0)) for t in range(0, 300, 10)], policy=policy, current=4)
    assert decisions[-1].replicas == 1
    assert min(d.replicas for d in decisions) == 1


def test_an_unknown_tick_breaks_the_idle_streak() -> None:
    policy = dataclasses.replace(POLICY, scale_down_stabilization_seconds=10)
    ticks: list[tuple[float, Observation | Unknown]] = [
        (0.0, observed(0)), (5.0, Unknown()), (10.0, observed(0)), (15.0, observed(0)), (16.0, observed(0)),
    ]
    decisions = run(ticks, policy=policy, current=2)
    assert [d.replicas for d in decisions] == [2, 2, 2, 2, 0]


def test_an_unknown_tick_at_zero_keeps_zero_and_then_waits_before_leaving_one() -> None:
    policy = dataclasses.replace(POLICY, scale_down_stabilization_seconds=10)
    history = History(observed_since=-100.0)
    ticks: list[tuple[float, Observation | Unknown]] = [
        (0.0, Unknown()), (1.0, observed(1)), (2.0, observed(0)), (9.0, observed(0)), (11.5, observed(0)),
    ]
    decisions = run(ticks, policy=policy, current=0, history=history)
    assert [d.replicas for d in decisions] == [0, 1, 1, 1, 0]


def test_zero_guard_covers_an_unknown_tick_at_zero_inside_the_window() -> None:
    # At zero the broker was unreadable, then someone scaled to 1 by hand: zero needs a clean window.
    policy = dataclasses.replace(POLICY, scale_down_stabilization_seconds=10)
    history = History(samples=(Sample(5.0, 0),), observed_since=-100.0, last_busy=5.0)
    decision = decide(observed(0), policy, history, current_replicas=1, now=8.0)
    assert decision.replicas == 1
    assert decision.reason.endswith("not to zero before 10s idle")


# --- unknown observations ------------------------------------------------------------------------


def test_unknown_holds_current_replicas() -> None:
    decision = decide(Unknown("broker unreadable (timeout)"), POLICY, History(), current_replicas=7, now=3.0)
    assert decision.replicas == 7
    assert decision.desired is None
    assert not decision.changed
    assert decision.reason == "broker unreadable (timeout): holding 7 replicas"
    assert decision.history.samples == (Sample(3.0, 7),)
    assert decision.history.last_busy == 3.0


def test_unknown_holds_even_outside_min_and_max() -> None:
    policy = dataclasses.replace(POLICY, min_replicas=2, max_replicas=4)
    assert decide(Unknown(), policy, History(), current_replicas=9, now=0.0).replicas == 9
    assert decide(Unknown(), policy, History(), current_replicas=0, now=0.0).replicas == 0


def test_after_an_outage_scale_down_waits_a_full_window() -> None:
    ticks: list[tuple[float, Observation | Unknown]] = [(0.0, Unknown()), (30.0, observed(0)), (61.0, observed(0))]
    decisions = run(ticks, current=5, history=warmed(5, at=0.0))
    assert [d.replicas for d in decisions] == [5, 5, 0]


# --- policy bounds -------------------------------------------------------------------------------


def test_lowered_max_applies_at_once() -> None:
    policy = dataclasses.replace(POLICY, max_replicas=3)
    history = History(samples=(Sample(999.0, 20),), observed_since=0.0)
    decision = decide(observed(100), policy, history, current_replicas=20, now=1000.0)
    assert decision.replicas == 3
    assert decision.direction == "down"


def test_raised_min_applies_at_once() -> None:
    policy = dataclasses.replace(POLICY, min_replicas=4)
    assert decide(observed(0), policy, History(), current_replicas=1, now=0.0).replicas == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_replicas": -1, "max_replicas": 1, "target_tasks_per_replica": 1},
        {"min_replicas": 0, "max_replicas": 0, "target_tasks_per_replica": 1},
        {"min_replicas": 3, "max_replicas": 2, "target_tasks_per_replica": 1},
        {"min_replicas": 0, "max_replicas": 1, "target_tasks_per_replica": 0},
        {"min_replicas": 0, "max_replicas": 1, "target_tasks_per_replica": 1, "scale_down_stabilization_seconds": -1},
    ],
)
def test_policy_rejects_impossible_values(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ScalingPolicy(**kwargs)


def test_observation_rejects_negative_counts() -> None:
    with pytest.raises(ValueError):
        Observation(pending=-1, in_flight=0)


def test_policy_from_spec_objects() -> None:
    autoscaling = SimpleNamespace(min_replicas=1, max_replicas=9, target_tasks_per_replica=4)
    behavior = SimpleNamespace(scale_down_stabilization_seconds=30)
    assert ScalingPolicy.from_spec(autoscaling, behavior) == ScalingPolicy(1, 9, 4, 30.0)  # type: ignore[arg-type]


# --- properties over random closed-loop runs -----------------------------------------------------

policies = st.builds(
    lambda lo, span, target, window: ScalingPolicy(lo, max(1, lo + span), target, window),
    st.integers(0, 5),
    st.integers(0, 30),
    st.integers(1, 10),
    st.sampled_from([0, 1, 5, 30, 60]),
)
observations = st.one_of(
    st.builds(Observation, st.integers(0, 300), st.integers(0, 60), st.integers(0, 40)),
    st.just(Unknown()),
)
steps = st.lists(st.tuples(st.floats(0.1, 20.0), observations), min_size=1, max_size=60)


def simulate(policy: ScalingPolicy, start: int, plan: list[tuple[float, Observation | Unknown]]):
    now, current, history = 0.0, start, History()
    for gap, observation in plan:
        now += gap
        decision = decide(observation, policy, history, current, now)
        yield now, observation, current, decision
        history, current = decision.history, decision.replicas


@settings(max_examples=300, deadline=None)
@given(policies, st.integers(0, 40), steps)
def test_property_bounds_busy_floor_and_immediate_scale_up(policy, start, plan) -> None:
    for _now, observation, current, decision in simulate(policy, start, plan):
        if isinstance(observation, Unknown):
            assert decision.replicas == current
            continue
        assert policy.min_replicas <= decision.replicas <= policy.max_replicas
        assert policy.min_replicas <= decision.desired <= policy.max_replicas
        assert decision.replicas >= min(observation.busy_workers, current, policy.max_replicas)
        if decision.desired >= current:
            assert decision.replicas == decision.desired  # scale up at once
        else:
            assert decision.replicas <= max(current, policy.min_replicas)  # stabilization never grows


@settings(max_examples=300, deadline=None)
@given(policies, st.integers(0, 40), steps)
def test_property_no_scale_down_within_the_window_after_a_higher_desire(policy, start, plan) -> None:
    seen: list[tuple[float, int]] = []  # (time, desired) of known ticks
    for now, observation, _current, decision in simulate(policy, start, plan):
        if not isinstance(observation, Unknown):
            seen.append((now, decision.desired))
        recent = [desired for t, desired in seen if t >= now - policy.window]
        if recent and not isinstance(observation, Unknown):
            assert decision.replicas >= max(recent)


@settings(max_examples=300, deadline=None)
@given(policies, st.integers(0, 40), steps)
def test_property_zero_only_after_a_full_idle_window(policy, start, plan) -> None:
    ticks: list[tuple[float, bool]] = []  # (time, provably idle)
    for now, observation, current, decision in simulate(policy, start, plan):
        ticks.append((now, isinstance(observation, Observation) and observation.work == 0))
        if decision.replicas == 0 and current > 0:
            assert policy.min_replicas == 0
            assert now - ticks[0][0] >= policy.window  # observed for a whole window
            assert all(idle for t, idle in ticks if t >= now - policy.window)
        if current == 0 and isinstance(observation, Observation) and observation.work > 0:
            assert decision.replicas >= 1  # from zero on the first message


@settings(max_examples=200, deadline=None)
@given(policies, st.integers(0, 40), steps)
def test_property_decide_is_deterministic_and_reason_is_one_line(policy, start, plan) -> None:
    history, current, now = History(), start, 0.0
    for gap, observation in plan:
        now += gap
        first = decide(observation, policy, history, current, now)
        assert decide(observation, policy, history, current, now) == first
        assert "\n" not in first.reason and first.reason
        assert all(s.time >= now - policy.window for s in first.history.samples)
        history, current = first.history, first.replicas


# --- between ticks: the growth that calls for more workers -------------------------------------------


def test_a_queue_at_zero_wakes_on_its_first_message() -> None:
    assert growth_to_scale_up(observed(), POLICY, replicas=0) == 1


def test_a_busy_queue_wakes_once_its_replicas_cannot_hold_the_backlog() -> None:
    # 3 replicas x 2 tasks hold 6; 1 waiting + 2 running leave room for 3 more
    assert growth_to_scale_up(observed(pending=1, in_flight=2), POLICY, replicas=3) == 4
    assert decide(observed(pending=4, in_flight=2), POLICY, History(), 3, 0.0).replicas == 3
    assert decide(observed(pending=5, in_flight=2), POLICY, History(), 3, 0.0).replicas == 4


def test_a_backlog_already_beyond_the_replicas_wakes_on_the_next_message() -> None:
    assert growth_to_scale_up(observed(pending=30), POLICY, replicas=3) == 1


def test_nothing_wakes_a_queue_at_max_or_one_whose_broker_is_unread() -> None:
    assert growth_to_scale_up(observed(pending=100), POLICY, replicas=20) is None
    assert growth_to_scale_up(Unknown(), POLICY, replicas=3) is None


@given(policies, st.integers(0, 60), st.integers(0, 60), st.integers(0, 25))
def test_that_growth_and_not_one_message_less_makes_decide_scale_up(
        policy: ScalingPolicy, pending: int, in_flight: int, replicas: int) -> None:
    replicas = min(replicas, policy.max_replicas)
    growth = growth_to_scale_up(observed(pending, in_flight), policy, replicas)
    if growth is None:
        assert replicas == policy.max_replicas
        return
    grown = decide(observed(pending + growth, in_flight), policy, History(), replicas, 0.0)
    assert grown.replicas > replicas
    if growth > 1:
        short = decide(observed(pending + growth - 1, in_flight), policy, History(), replicas, 0.0)
        assert short.replicas <= max(replicas, policy.min_replicas)
