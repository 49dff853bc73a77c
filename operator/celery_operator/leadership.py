"""Pure: who acts among the operator's replicas, decided over one coordination.k8s.io Lease.

The rules (those of client-go's and controller-runtime's leader election):
- A candidate judges a Lease held by another by its OWN clock: the Lease expires `leaseDurationSeconds`
  after the moment this candidate last saw its record change (`Sighting.since`), never by the
  holder's renewTime, so clocks that disagree between nodes cannot hand the Lease over early.
- No Lease: create it. Ours: renew it. Released (no holder) or expired: take it. Else: wait.
- The leader renews every retry period and gives up acting once `renew_deadline` has passed since
  its last renewal was sent. The deadline is shorter than the Lease's duration, so the leader has
  stopped before any standby can see the Lease expire: the margin covers the time to stop.
- A clean shutdown releases the Lease (no holder, duration 1 s), so a standby takes it at its next
  look instead of waiting out the duration.

Times: `now` is a monotonic clock of this process (seconds); `at` is the wall-clock instant written
into the Lease for people and tools to read.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

LEASE_API_VERSION: Final = "coordination.k8s.io/v1"
LEASE_KIND: Final = "Lease"
RELEASED_DURATION_SECONDS: Final = 1


@dataclass(frozen=True)
class Terms:
    """How long a Lease lasts, how long the leader tries to renew it, how often anyone looks."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def problems(self) -> list[str]:
        found = []
        if self.retry_period <= 0:
            found.append("the retry period must be > 0")
        if self.renew_deadline <= self.retry_period:
            found.append("the renew deadline must be longer than the retry period (a renewal gets more than one try)")
        if self.lease_duration <= self.renew_deadline:
            found.append("the lease duration must be longer than the renew deadline (the leader stops "
                         "before a standby may take over)")
        if self.lease_duration < 1:
            found.append("the lease duration must be at least 1 s (the Lease counts in whole seconds)")
        return found

    @property
    def duration_seconds(self) -> int:
        """leaseDurationSeconds as written: whole seconds, rounded up (never shorter than meant)."""
        return max(1, -int(-self.lease_duration // 1))


@dataclass(frozen=True)
class Record:
    """The Lease's spec: who holds it, for how long, since when. `holder` "" = nobody."""

    holder: str
    duration_seconds: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def from_lease(cls, lease: Mapping[str, Any]) -> Record:
        spec = lease.get("spec") or {}
        return cls(holder=spec.get("holderIdentity") or "", duration_seconds=int(spec.get("leaseDurationSeconds") or 0),
                   acquire_time=spec.get("acquireTime"), renew_time=spec.get("renewTime"),
                   transitions=int(spec.get("leaseTransitions") or 0))

    def spec(self) -> dict[str, Any]:
        return {"holderIdentity": self.holder or None, "leaseDurationSeconds": self.duration_seconds,
                "acquireTime": self.acquire_time, "renewTime": self.renew_time,
                "leaseTransitions": self.transitions}


@dataclass(frozen=True)
class Sighting:
    """A Lease's record as this candidate last saw it, and when (its monotonic clock) it last changed."""

    record: Record
    since: float


def sight(previous: Sighting | None, record: Record, now: float) -> Sighting:
    """What a look at the Lease tells: an unchanged record keeps its clock running, a changed one restarts it."""
    if previous is not None and previous.record == record:
        return previous
    return Sighting(record, now)


class Move(enum.Enum):
    CREATE = "create"  # there is no Lease yet
    RENEW = "renew"  # we hold it
    TAKE = "take"  # released, or expired by our clock
    WAIT = "wait"  # another holds it and it has not expired


def expires_at(sighting: Sighting, terms: Terms) -> float:
    """When, on our clock, the Lease is free unless its record changes meanwhile."""
    return sighting.since + (sighting.record.duration_seconds or terms.lease_duration)


def decide(identity: str, sighting: Sighting | None, now: float, terms: Terms) -> Move:
    if sighting is None:
        return Move.CREATE
    holder = sighting.record.holder
    if holder == identity:
        return Move.RENEW
    if not holder or now >= expires_at(sighting, terms):
        return Move.TAKE
    return Move.WAIT


def microtime(at: datetime.datetime) -> str:
    """A MicroTime as the API server writes it: UTC, microseconds, a Z."""
    return at.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claimed(identity: str, current: Record | None, move: Move, at: datetime.datetime, terms: Terms) -> Record:
    """The record to write for CREATE, TAKE or RENEW."""
    stamp = microtime(at)
    if move is Move.RENEW and current is not None:
        return replace(current, duration_seconds=terms.duration_seconds, renew_time=stamp)
    if move is Move.TAKE and current is not None:
        return Record(identity, terms.duration_seconds, stamp, stamp, current.transitions + 1)
    if move is Move.CREATE:
        return Record(identity, terms.duration_seconds, stamp, stamp, 0)
    raise ValueError(f"nothing to write for {move.value}")


def released(current: Record, at: datetime.datetime) -> Record:
    """The record a leader leaves behind at a clean shutdown: nobody holds it, a standby takes it at once."""
    return replace(current, holder="", duration_seconds=RELEASED_DURATION_SECONDS, renew_time=microtime(at))


def lease_manifest(namespace: str, name: str, record: Record, resource_version: str | None = None) -> dict[str, Any]:
    """The Lease to create (no resourceVersion) or to replace (the one read: the write fails with a
    conflict if anyone wrote in between)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version:
        metadata["resourceVersion"] = resource_version
    return {"apiVersion": LEASE_API_VERSION, "kind": LEASE_KIND, "metadata": metadata, "spec": record.spec()}


def renewal_budget(last_renewed: float, now: float, terms: Terms) -> float:
    """Seconds left for the leader to renew before it must stop acting (<= 0: stop now)."""
    return last_renewed + terms.renew_deadline - now


def next_look(identity: str, sighting: Sighting | None, now: float, terms: Terms) -> float:
    """Seconds a standby waits before it looks again: the retry period, or less when the Lease it
    waits for expires sooner (a takeover need not wait for the next period)."""
    if sighting is None or not sighting.record.holder or sighting.record.holder == identity:
        return terms.retry_period
    return max(0.0, min(terms.retry_period, expires_at(sighting, terms) - now))
