"""The leader election (election.Elector) of two replicas over one Lease in a fake API server that
keeps resourceVersions as the real one does: exactly one leads, the other writes nothing while
it waits, takes over only once the Lease expired by its own clock (or was released), and a leader
that cannot renew stops before the standby may take over."""

from __future__ import annotations

import copy
import datetime
from collections.abc import Mapping
from typing import Any

import pytest

from celery_operator.election import Elector
from celery_operator.kube import KubeError
from celery_operator.leadership import Terms

pytestmark = pytest.mark.controllers

TERMS = Terms(lease_duration=15, renew_deadline=10, retry_period=2)
NAMESPACE, NAME = "celery-system", "op-celery-operator"


class FakeLeases:
    """One namespace's Leases: create refuses a second, replace refuses a stale resourceVersion."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []  # (verb, holder written)
        self.unreachable = False
        self._version = 0

    def _check(self) -> None:
        if self.unreachable:
            raise KubeError(0, "Unreachable", "connection refused")

    def get(self, api_version: str, kind: str, namespace: str, name: str,
            timeout: float | None = None) -> dict[str, Any] | None:
        self._check()
        return copy.deepcopy(self.leases.get(name))

    def _store(self, verb: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        self._version += 1
        stored = copy.deepcopy(dict(manifest))
        stored["metadata"]["resourceVersion"] = str(self._version)
        self.leases[stored["metadata"]["name"]] = stored
        self.writes.append((verb, stored["spec"]["holderIdentity"] or ""))
        return copy.deepcopy(stored)

    def create(self, manifest: Mapping[str, Any], field_manager: str, timeout: float | None = None) -> dict[str, Any]:
        self._check()
        if manifest["metadata"]["name"] in self.leases:
            raise KubeError(409, "AlreadyExists", "leases exists")
        return self._store("create", manifest)

    def replace(self, manifest: Mapping[str, Any], field_manager: str, timeout: float | None = None) -> dict[str, Any]:
        self._check()
        current = self.leases[manifest["metadata"]["name"]]
        if manifest["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise KubeError(409, "Conflict", "the object has been modified")
        return self._store("replace", manifest)

    def holder(self) -> str:
        return self.leases[NAME]["spec"]["holderIdentity"] or ""

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime.datetime:
        return datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(seconds=self.now)


@pytest.fixture
def leases() -> FakeLeases:
    return FakeLeases()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def candidate(identity: str, leases: FakeLeases, clock: Clock, lost: list[str]) -> Elector:
    return Elector(leases, NAMESPACE, NAME, identity, TERMS, "celery-operator", 5.0, clock=clock,
                   wall=clock.wall, on_lost=lost.append)


def test_the_first_creates_the_lease_and_the_second_waits_writing_nothing(leases: FakeLeases, clock: Clock) -> None:
    lost: list[str] = []
    a, b = candidate("op-a", leases, clock, lost), candidate("op-b", leases, clock, lost)
    assert a.attempt() and a.leading
    assert leases.writes == [("create", "op-a")]
    for _ in range(7):  # a renews every period; b looks every period and writes nothing
        clock.now += 2
        assert a.attempt()
        assert not b.attempt() and not b.leading
    assert {holder for _, holder in leases.writes} == {"op-a"}
    assert leases.holder() == "op-a" and not lost


def test_a_dead_leaders_lease_is_taken_once_it_expired_by_the_standbys_clock(leases: FakeLeases,
                                                                             clock: Clock) -> None:
    lost: list[str] = []
    a, b = candidate("op-a", leases, clock, lost), candidate("op-b", leases, clock, lost)
    assert a.attempt()
    clock.now += 1
    assert not b.attempt()  # b first sees a's record now: it expires at +15 from here
    # a dies: no more renewals
    clock.now += 14.9
    assert not b.attempt()
    clock.now += 0.1
    assert b.attempt() and b.leading
    assert leases.holder() == "op-b"
    assert leases.leases[NAME]["spec"]["leaseTransitions"] == 1
    assert leases.writes[-1] == ("replace", "op-b")


def test_a_leader_that_cannot_renew_holds_its_writes_at_the_deadline_before_the_standby_takes_over(
        leases: FakeLeases, clock: Clock) -> None:
    lost: list[str] = []
    a, b = candidate("op-a", leases, clock, lost), candidate("op-b", leases, clock, lost)
    assert a.attempt()  # renewed at 1000
    assert not b.attempt()  # b saw it land at 1000 too
    leases.unreachable = True  # the API server is away for a (not for b, a moment later)
    clock.now += 9.9
    assert not a.attempt()
    a.check()
    assert not lost and a.acting  # within the deadline: still acting
    clock.now += 0.1
    with pytest.raises(KubeError, match="write held: the Lease celery-system/op-celery-operator was not renewed"):
        a.check()  # the write guard, before every write
    assert not a.acting and a.leading and not lost, "held, not gone: the Lease may still be its own"
    leases.unreachable = False
    assert not b.attempt(), "the standby still waits: the leader stopped 5 s before the Lease expires"
    clock.now += 5
    assert b.attempt()
    assert not a.attempt(), "back in touch, a sees b's Lease"
    assert lost == ["the Lease celery-system/op-celery-operator is held by op-b now"]
    with pytest.raises(KubeError):
        a.check()


def test_a_leader_cut_off_with_everyone_renews_its_own_lease_and_resumes(leases: FakeLeases, clock: Clock) -> None:
    """The API server restarting: nobody can read or write the Lease for longer than it lasts. The
    leader holds its writes at the deadline; the first to look when it answers again decides."""
    lost: list[str] = []
    a, b = candidate("op-a", leases, clock, lost), candidate("op-b", leases, clock, lost)
    assert a.attempt() and not b.attempt()
    leases.unreachable = True
    for _ in range(15):  # 30 s of retries by both
        clock.now += 2
        assert not a.attempt() and not b.attempt()
    with pytest.raises(KubeError):
        a.check()
    leases.unreachable = False
    writes = len(leases.writes)
    assert a.attempt(), "its own Lease, read back: renewed"
    a.check()  # writes go out again, without a restart
    assert a.acting and not lost and leases.writes[writes:] == [("replace", "op-a")]
    assert not b.attempt(), "the record changed: the standby waits a whole duration again"
    assert leases.holder() == "op-a"


def test_after_an_outage_the_standby_waits_a_whole_duration_so_a_live_leader_renews_first(
        leases: FakeLeases, clock: Clock) -> None:
    lost: list[str] = []
    a, b = candidate("op-a", leases, clock, lost), candidate("op-b", leases, clock, lost)
    assert a.attempt() and not b.attempt()
    leases.unreachable = True
    clock.now += 30
    assert not b.attempt()
    leases.unreachable = False
    assert not b.attempt(), "the outage does not count: the Lease is not expired by what b could see"
    clock.now += 2
    assert a.attempt() and not b.attempt(), "the leader, alive, renewed in the meantime"
    clock.now += 14.9
    assert not b.attempt()
    clock.now += 0.2  # a really gone: unchanged for a whole duration b watched
    assert b.attempt() and leases.holder() == "op-b"


def test_a_leader_that_finds_another_holder_stops_at_once(leases: FakeLeases, clock: Clock) -> None:
    lost: list[str] = []
    a, b = candidate("op-a", leases, clock, lost), candidate("op-b", leases, clock, lost)
    assert a.attempt()
    clock.now += 1
    b.attempt()
    clock.now += 15  # a was frozen all along; b takes over
    assert b.attempt()
    assert not a.attempt()
    assert lost == ["the Lease celery-system/op-celery-operator is held by op-b now"]
    assert leases.holder() == "op-b"


def test_a_released_lease_is_taken_at_the_next_look(leases: FakeLeases, clock: Clock) -> None:
    lost: list[str] = []
    a, b = candidate("op-a", leases, clock, lost), candidate("op-b", leases, clock, lost)
    assert a.attempt()
    clock.now += 1
    assert not b.attempt()
    a.release()
    assert leases.holder() == "" and not a.leading
    clock.now += 0.5  # no waiting out the duration
    assert b.attempt()
    assert leases.holder() == "op-b"
    b.release()
    a.release()  # not leading any more: writes nothing
    assert [verb for verb, _ in leases.writes].count("replace") == 3  # a's release, b's take, b's release


def test_a_restarted_replica_resumes_its_own_lease(leases: FakeLeases, clock: Clock) -> None:
    """The kubelet restarted the leader's container (same pod, same identity): the Lease is still
    its own, nobody else acts meanwhile, and it goes on at once."""
    lost: list[str] = []
    assert candidate("op-a", leases, clock, lost).attempt()
    clock.now += 3
    restarted = candidate("op-a", leases, clock, lost)
    assert restarted.attempt() and leases.holder() == "op-a"


def test_two_standbys_racing_for_a_free_lease_get_one_leader(leases: FakeLeases, clock: Clock) -> None:
    lost: list[str] = []
    a, b = candidate("op-a", leases, clock, lost), candidate("op-b", leases, clock, lost)
    assert a.attempt()
    a.release()
    # both read the free Lease, b writes first: a's write carries a stale resourceVersion
    stale = leases.get("", "", NAMESPACE, NAME)
    assert b.attempt()
    leases_get = leases.get
    leases.get = lambda *args, **kwargs: copy.deepcopy(stale)  # type: ignore[method-assign]
    assert not a.attempt()  # a 409, not a second leader
    leases.get = leases_get  # type: ignore[method-assign]
    assert leases.holder() == "op-b" and not a.leading and not lost
