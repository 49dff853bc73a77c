"""The operator's leader election among its replicas (the chart runs two): exactly one acts.

As controller-runtime does it: the process stands by until it holds the Lease, and only then starts
kopf, so a standby writes nothing at all (no status, no children, no kopf annotations, no Events)
and only reads the Lease. The leader renews the Lease from a thread of its own, every retry period.
Once a renewal has not succeeded within the renew deadline, the leader holds every write (the
deadline is shorter than the Lease's duration, so it has stopped before a standby may take over)
and keeps looking: if the Lease is still its own when the API server answers again (it was away for
everyone, as during its restart), it renews it and carries on without a restart; if the Lease shows
another holder, the process exits at once with LOST_LEADERSHIP_EXIT_CODE and the kubelet restarts it
as a standby. (controller-runtime exits at the deadline, so an API server restart restarts every
controller built on it.) Every write of the operator's Kubernetes port passes `Elector.check` first,
so a leader that wakes up late (a frozen node, a long GC pause) holds its next write rather than
making it. A clean shutdown (SIGTERM) stops kopf, then releases the Lease, and a standby takes over
at its next look.

While standing by, the replica serves /healthz itself at kopf's liveness address (kopf serves it
once it leads): a standby is healthy, and Ready, while its loop goes round, so that the Deployment
counts both replicas and `helm install --wait` works. `celery_operator_leader` tells which one acts.

The decisions are leadership.py's; the Lease is read and written through a LeasePort (kube.Kube).
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Final

from . import metrics
from .beat.health import HealthServer, Liveness
from .kube import Kube, KubeError
from .leadership import (LEASE_API_VERSION, LEASE_KIND, Move, Record, Sighting, Terms, claimed, decide,
                         lease_manifest, next_look, released, renewal_budget, sight)
from .ports import LeasePort
from .settings import Settings

LOST_LEADERSHIP_EXIT_CODE: Final = 3
logger = logging.getLogger(__name__)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def exit_at_once(reason: str) -> None:
    """Stop acting now: no handler, thread or pending write of this process may go on."""
    logger.critical("%s: exiting (code %d) so that the kubelet restarts this replica as a standby",
                    reason, LOST_LEADERSHIP_EXIT_CODE)
    for stream in (sys.stderr, sys.stdout):
        stream.flush()
    os._exit(LOST_LEADERSHIP_EXIT_CODE)


class Elector:
    """One candidate for the Lease `namespace/name`. `attempt` runs on the standby's loop before
    kopf starts, then on the renewing thread; `check` on any thread that is about to write."""

    def __init__(self, leases: LeasePort, namespace: str, name: str, identity: str, terms: Terms,
                 field_manager: str, request_timeout: float, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime.datetime] = _utcnow,
                 on_lost: Callable[[str], None] = exit_at_once):
        self.namespace, self.name, self.identity = namespace, name, identity
        self.terms = terms
        self._leases = leases
        self._field_manager = field_manager
        self._request_timeout = request_timeout
        self._clock, self._wall, self._on_lost = clock, wall, on_lost
        self._sighting: Sighting | None = None
        self._last_renewed: float | None = None  # when the last successful renewal was sent; None: not leading
        self._held_since: float | None = None  # leading, but writes held since (the deadline passed)
        self._holder_seen: str | None = None
        self._last_error: str | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._renewer: threading.Thread | None = None
        # the standby's /healthz: its loop reports every look (a look takes at most one request timeout)
        self.liveness = Liveness(allowance=request_timeout + terms.retry_period, clock=clock,
                                 subject="the operator's standby loop")

    @classmethod
    def from_settings(cls, settings: Settings) -> Elector:
        terms = settings.leader_election_terms()
        timeout = min(settings.api_timeout_seconds, terms.renew_deadline)
        return cls(Kube.from_environment(timeout), settings.leader_election_namespace,
                   settings.leader_election_lease, settings.leader_election_identity, terms,
                   settings.field_manager, timeout)

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def leading(self) -> bool:
        return self._last_renewed is not None

    @property
    def acting(self) -> bool:
        """Leading and renewed within the deadline: writes may go out."""
        return self._last_renewed is not None and renewal_budget(self._last_renewed, self._clock(), self.terms) > 0

    # --- one look at the Lease ---------------------------------------------------------------

    def attempt(self) -> bool:
        """Read the Lease and write what it calls for; True when this replica holds it now."""
        with self._lock:
            started = self._clock()
            try:
                return self._attempt(started)
            except KubeError as error:
                self._note_error(error)
                if not self.leading:
                    # time the Lease could not be read does not count towards its expiry: after an
                    # API server outage the standby waits a whole duration, and a leader that is
                    # still alive renews first instead of being replaced
                    self._sighting = None
                return False

    def _attempt(self, started: float) -> bool:
        timeout = self._timeout(started)
        lease = self._leases.get(LEASE_API_VERSION, LEASE_KIND, self.namespace, self.name, timeout=timeout)
        record = None if lease is None else Record.from_lease(lease)
        self._sighting = None if record is None else sight(self._sighting, record, self._clock())
        move = decide(self.identity, self._sighting, self._clock(), self.terms)
        if move is Move.WAIT:
            assert record is not None
            if self.leading:
                self._lose(f"the Lease {self.lease} is held by {record.holder} now")
            self._note_holder(record.holder)
            return False
        new = claimed(self.identity, record, move, self._wall(), self.terms)
        try:
            if lease is None:
                written = self._leases.create(lease_manifest(self.namespace, self.name, new), self._field_manager,
                                              timeout=self._timeout(started))
            else:
                manifest = lease_manifest(self.namespace, self.name, new, lease["metadata"].get("resourceVersion"))
                written = self._leases.replace(manifest, self._field_manager, timeout=self._timeout(started))
        except KubeError as error:
            if error.status == 409:  # another candidate wrote first: the next look tells who holds it
                logger.debug("the Lease %s changed while we wrote it: %s", self.lease, error)
                return False
            raise
        self._sighting = sight(self._sighting, Record.from_lease(written), self._clock())
        self._last_error = None
        if not self.leading:
            self._won(move, record)
        elif self._held_since is not None:
            logger.warning("%s renewed the Lease %s again after %.1f s: writes resume", self.identity, self.lease,
                           self._clock() - self._held_since)
            metrics.LEADER.set(1)
        self._held_since = None
        self._last_renewed = started
        return True

    def _timeout(self, now: float) -> float:
        """A leader's request may not outlast its renew deadline; a standby's, or a leader's that
        holds its writes (it renews only a Lease it has just read as its own), the usual timeout."""
        if self._last_renewed is None or self._held_since is not None:
            return self._request_timeout
        return max(0.1, min(self._request_timeout, renewal_budget(self._last_renewed, now, self.terms)))

    def _won(self, move: Move, before: Record | None) -> None:
        how = {Move.CREATE: "created it", Move.RENEW: "it was still ours"}.get(move)
        if how is None:
            how = f"took it over from {before.holder}" if before and before.holder else "it was free"
        logger.info("%s leads: acquired the Lease %s (%s)", self.identity, self.lease, how)
        self._holder_seen = self.identity
        metrics.LEADER.set(1)

    def _note_holder(self, holder: str) -> None:
        if holder != self._holder_seen:
            logger.info("%s stands by: the Lease %s is held by %s", self.identity, self.lease, holder or "nobody")
            self._holder_seen = holder

    def _note_error(self, error: KubeError) -> None:
        message = str(error)
        if message != self._last_error:  # once per distinct failure, not every retry period
            logger.warning("could not read or write the Lease %s: %s", self.lease, message)
            self._last_error = message

    # --- standing by -------------------------------------------------------------------------

    def wait_for_leadership(self, stop: threading.Event) -> bool:
        """Look at the Lease until this replica holds it (True) or `stop` is set (False)."""
        metrics.LEADER.set(0)
        logger.info("%s is a candidate for the Lease %s (%s)", self.identity, self.lease, self.terms)
        while not stop.is_set():
            if self.attempt():
                return True
            delay = next_look(self.identity, self._sighting, self._clock(), self.terms)
            self.liveness.progressed(back_within=delay)
            stop.wait(delay)
        return False

    # --- leading -----------------------------------------------------------------------------

    def start_renewing(self) -> None:
        self._renewer = threading.Thread(target=self._renew, name="lease-renewer", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        """Every retry period, a look at the Lease: it renews a Lease still ours (also after the
        deadline passed), and stops this process once the Lease shows another holder."""
        while not self._stopped.wait(self.terms.retry_period):
            if not self.attempt() and not self._stopped.is_set():
                self._hold_if_overdue()

    def check(self) -> None:
        """The write guard of the operator's Kube (installed once this replica leads): refuse the write
        once the renew deadline has passed, or the Lease is lost or released."""
        if self._last_renewed is None:
            raise KubeError(0, "NotLeading", f"write held: this replica does not hold the Lease {self.lease}")
        if self._hold_if_overdue():
            raise KubeError(0, "LeaseNotRenewed",
                            f"write held: the Lease {self.lease} was not renewed within {self.terms.renew_deadline:g} s")

    def _hold_if_overdue(self) -> bool:
        """True (and writes held from now on) when this replica leads but is past its renew deadline."""
        if self._last_renewed is None or self.acting:
            return False
        if self._held_since is None:
            self._held_since = self._clock()
            metrics.LEADER.set(0)
            logger.warning("%s could not renew the Lease %s within %g s: every write held until it is renewed, "
                           "or this replica exits once it sees another holder", self.identity, self.lease,
                           self.terms.renew_deadline)
        return True

    def _lose(self, reason: str) -> None:
        self._last_renewed = None
        self._held_since = None
        self._holder_seen = None
        metrics.LEADER.set(0)
        self._on_lost(reason)

    def release(self) -> None:
        """Stop renewing; if this replica still holds the Lease, leave it free for a standby."""
        self._stopped.set()
        if self._renewer is not None:
            self._renewer.join(timeout=self._request_timeout + self.terms.retry_period)
        with self._lock:
            if not self.leading:
                return
            try:
                self._release()
            except KubeError as error:
                logger.warning("could not release the Lease %s (a standby takes over when it expires): %s",
                               self.lease, error)
            self._last_renewed = None
            metrics.LEADER.set(0)

    def _release(self) -> None:
        now = self._clock()
        assert self._last_renewed is not None
        if renewal_budget(self._last_renewed, now, self.terms) <= 0:
            return  # it may be another's by now
        lease = self._leases.get(LEASE_API_VERSION, LEASE_KIND, self.namespace, self.name, timeout=self._timeout(now))
        if lease is None or Record.from_lease(lease).holder != self.identity:
            return
        free = released(Record.from_lease(lease), self._wall())
        self._leases.replace(lease_manifest(self.namespace, self.name, free, lease["metadata"].get("resourceVersion")),
                             self._field_manager, timeout=self._timeout(now))
        logger.info("%s released the Lease %s", self.identity, self.lease)

    def close(self) -> None:
        self._leases.close()


def _standby_health(liveness_url: str | None, liveness: Liveness) -> HealthServer | None:
    """/healthz at kopf's liveness address, until kopf serves it."""
    if not liveness_url:
        return None
    address = urllib.parse.urlsplit(liveness_url)
    return HealthServer(liveness, address.port or 80, address.hostname or "").start()


def run_elected(settings: Settings, liveness_url: str | None, run: Callable[[Callable[[], None]], Any]) -> int:
    """Stand by until this replica holds the Lease, then `run(write_guard)` (kopf, until it stops)
    while renewing the Lease; release it after. The process's exit code."""
    elector = Elector.from_settings(settings)
    metrics.serve(settings.metrics_port, settings.metrics_address)
    stop = threading.Event()
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in (signal.SIGTERM, signal.SIGINT)}
    health = _standby_health(liveness_url, elector.liveness)
    try:
        leading = elector.wait_for_leadership(stop)
    finally:
        if health is not None:
            health.stop()
        for signum, handler in previous.items():  # kopf installs its own when it starts
            signal.signal(signum, handler)
    if not leading:
        logger.info("%s stopped while standing by", elector.identity)
        elector.close()
        return 0
    elector.start_renewing()
    try:
        run(elector.check)
    finally:
        elector.release()
        elector.close()
    return 0
