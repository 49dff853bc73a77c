"""The leader election's decisions (leadership.py), by explicit times: who may act, when a standby
may take over, what is written, when the leader must stop."""

from __future__ import annotations

import datetime

import pytest

from celery_operator.leadership import (Move, Record, Sighting, Terms, claimed, decide, expires_at, lease_manifest,
                                        microtime, next_look, released, renewal_budget, sight)

pytestmark = pytest.mark.unit

TERMS = Terms(lease_duration=15, renew_deadline=10, retry_period=2)
AT = datetime.datetime(2026, 12, 1, 21, 0, 0, tzinfo=datetime.timezone.utc)
HELD_BY_A = Record("op-a", 15, "2026-12-01T20:59:00.000000Z", "2026-12-01T20:59:58.000000Z", 3)


def test_no_lease_is_created() -> None:
    assert decide("op-b", None, 100.0, TERMS) is Move.CREATE
    record = claimed("op-b", None, Move.CREATE, AT, TERMS)
    assert record == Record("op-b", 15, "2026-12-01T21:00:00.000000Z", "2026-12-01T21:00:00.000000Z", 0)


def test_a_lease_held_by_another_is_not_taken_before_it_expires_by_our_clock() -> None:
    seen = sight(None, HELD_BY_A, now=100.0)
    assert decide("op-b", seen, 100.0, TERMS) is Move.WAIT
    assert decide("op-b", seen, 114.9, TERMS) is Move.WAIT
    assert decide("op-b", seen, 115.0, TERMS) is Move.TAKE


def test_a_renewal_restarts_the_standbys_clock_and_an_unchanged_record_does_not() -> None:
    seen = sight(None, HELD_BY_A, now=100.0)
    assert sight(seen, HELD_BY_A, now=110.0) is seen  # nothing new: still expires at 115
    renewed = sight(seen, Record("op-a", 15, HELD_BY_A.acquire_time, "2026-12-01T21:00:08.000000Z", 3), now=110.0)
    assert expires_at(renewed, TERMS) == 125.0
    assert decide("op-b", renewed, 116.0, TERMS) is Move.WAIT


def test_the_holders_renew_time_is_not_trusted() -> None:
    """A renewTime from long ago (another node's clock, or an old sighting) does not make the
    Lease expired: only our own clock since the record last changed counts."""
    ancient = Record("op-a", 15, "2020-01-01T00:00:00.000000Z", "2020-01-01T00:00:00.000000Z", 0)
    assert decide("op-b", sight(None, ancient, now=500.0), 500.0, TERMS) is Move.WAIT


def test_the_records_own_duration_counts() -> None:
    longer = Record("op-a", 60, None, None, 0)
    seen = sight(None, longer, now=0.0)
    assert decide("op-b", seen, 59.0, TERMS) is Move.WAIT
    assert decide("op-b", seen, 60.0, TERMS) is Move.TAKE
    assert expires_at(Sighting(Record("op-a", 0, None, None, 0), 0.0), TERMS) == 15.0  # none written: ours


def test_our_own_lease_is_renewed_and_keeps_its_acquire_time() -> None:
    seen = sight(None, HELD_BY_A, now=100.0)
    assert decide("op-a", seen, 100.0, TERMS) is Move.RENEW
    renewed = claimed("op-a", HELD_BY_A, Move.RENEW, AT, TERMS)
    assert renewed.acquire_time == HELD_BY_A.acquire_time
    assert renewed.renew_time == "2026-12-01T21:00:00.000000Z"
    assert renewed.transitions == 3


def test_a_takeover_counts_a_transition_and_starts_a_new_term() -> None:
    taken = claimed("op-b", HELD_BY_A, Move.TAKE, AT, TERMS)
    assert taken == Record("op-b", 15, "2026-12-01T21:00:00.000000Z", "2026-12-01T21:00:00.000000Z", 4)


def test_a_released_lease_is_taken_at_once() -> None:
    free = released(HELD_BY_A, AT)
    assert free.holder == "" and free.duration_seconds == 1
    assert free.spec()["holderIdentity"] is None
    assert decide("op-b", sight(None, free, now=100.0), 100.0, TERMS) is Move.TAKE
    assert Record.from_lease({"spec": free.spec()}) == free


def test_the_leader_must_stop_at_its_renew_deadline_well_before_a_standby_may_take_over() -> None:
    # the leader sent its last good renewal at 50; a standby saw it land no earlier
    assert renewal_budget(50.0, 55.0, TERMS) == 5.0
    assert renewal_budget(50.0, 60.0, TERMS) <= 0
    standby = sight(None, HELD_BY_A, now=50.0)
    assert decide("op-b", standby, 60.0, TERMS) is Move.WAIT  # the leader has stopped; the standby still waits
    assert expires_at(standby, TERMS) - (50.0 + TERMS.renew_deadline) == 5.0  # the margin to stop in


def test_a_standby_looks_again_when_the_lease_expires_not_a_period_later() -> None:
    seen = sight(None, HELD_BY_A, now=100.0)
    assert next_look("op-b", seen, 100.0, TERMS) == 2.0
    assert next_look("op-b", seen, 114.5, TERMS) == 0.5
    assert next_look("op-b", seen, 120.0, TERMS) == 0.0
    assert next_look("op-b", None, 100.0, TERMS) == 2.0


def test_terms_that_would_let_two_act_are_refused() -> None:
    assert TERMS.problems() == []
    assert Terms(lease_duration=10, renew_deadline=10, retry_period=2).problems()
    assert Terms(lease_duration=15, renew_deadline=2, retry_period=2).problems()
    assert Terms(lease_duration=15, renew_deadline=10, retry_period=0).problems()
    assert Terms(lease_duration=2.5, renew_deadline=2, retry_period=1).duration_seconds == 3


def test_record_round_trip_and_manifest() -> None:
    lease = lease_manifest("celery-system", "op-celery-operator", HELD_BY_A, resource_version="42")
    assert lease["apiVersion"] == "coordination.k8s.io/v1" and lease["kind"] == "Lease"
    assert lease["metadata"] == {"name": "op-celery-operator", "namespace": "celery-system", "resourceVersion": "42"}
    assert Record.from_lease(lease) == HELD_BY_A
    assert "resourceVersion" not in lease_manifest("ns", "n", HELD_BY_A)["metadata"]
    assert Record.from_lease({}) == Record("", 0, None, None, 0)


def test_microtime_is_utc() -> None:
    later = datetime.datetime(2026, 12, 1, 23, 0, 0, 500, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    assert microtime(later) == "2026-12-01T21:00:00.000500Z"


def test_settings_refuse_an_election_without_identity_or_with_unsafe_terms() -> None:
    from celery_operator.settings import Settings

    base = {"CELERY_OPERATOR_LEADER_ELECTION_LEASE": "op-celery-operator",
            "CELERY_OPERATOR_LEADER_ELECTION_NAMESPACE": "celery-system",
            "CELERY_OPERATOR_LEADER_ELECTION_IDENTITY": "op-celery-operator-7d9-abcde"}
    assert Settings.from_environment(base).leader_election_terms() == TERMS
    assert Settings.from_environment({}).leader_election_lease == ""  # no election: acts at once
    with pytest.raises(ValueError, match="IDENTITY"):
        Settings.from_environment({**base, "CELERY_OPERATOR_LEADER_ELECTION_IDENTITY": ""})
    with pytest.raises(ValueError, match="renew deadline"):
        Settings.from_environment({**base, "CELERY_OPERATOR_LEADER_ELECTION_RENEW_DEADLINE_SECONDS": "20"})
