"""The beat program: send every due run of a TaskQueue's PeriodicJobs exactly once.

Every ~0.5 s (sooner when a slot is due sooner) the beat makes one pipelined round trip to the
state Redis: renew (or try to take) the leader lease, refresh the heartbeat when leading, and read
the `jobs` and `fired` hashes. For every job not suspended it computes the slots due after
max(fired, activeSince) up to now (runs missed while no beat ran are caught up, oldest first, at
most `max_catch_up` per job), and for each slot:

1. CLAIM it with one Lua script (beat/state.py): fired[job] = slot, only if slot > fired[job] and the job's
   definition in `jobs` is still the one the beat acted on. Redis runs scripts one at a time, so
   of two beats that both see a slot due, exactly one claims it.
2. Only the claimant SENDS the task, by name, with a deterministic task id naming the job and the
   slot (`<namespace>/<job>@<slot ISO 8601 UTC>`).

Claim-then-send means two beats can never both send a slot. The price: if the beat dies between
claim and send (a crash, SIGKILL, a node failure in those few milliseconds) that one run is lost.
A send that fails with an error (the broker refused, timed out) is given back: the claim is undone
(if nobody moved `fired` since) and the next round tries the slot again.

The leader lease (SET NX PX, renewed every round, released on SIGTERM) makes a second beat (say,
an old pod on an unreachable node while its replacement starts) idle instead of contending; the
claims make the schedule safe even when the lease is lost or doubted. The heartbeat key
(`beat-heartbeat`, with a TTL) is how the operator knows a beat is leading (BeatReady).

Liveness (beat/health.py): before every wait the loop says when it will be back, and after every
send it attempts it says it moved on. `GET /healthz` (served by `__main__` from a daemon thread on
the health port) answers 503 once the loop is overdue by more than 10 s, which only a wedged loop
is: an unreachable Redis or broker makes rounds fail and back off, not stop. The kubelet restarts
a wedged or frozen beat; the claims make that restart as safe as any other (nothing sent twice,
the runs missed meanwhile caught up).

Secrets: the broker and state URLs come from the environment (Secrets in the pod) and are never
logged; error texts are scrubbed of them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, Final

import redis

from ..broker.urls import is_redis_url, redact, scrub
from .health import Liveness
from .jobs import BeatJob, parse_job, task_id
from .schedule import due_slots, format_slot, next_slot
from .state import ALREADY_CLAIMED, STALE, BeatStore

log = logging.getLogger("celery_operator.beat")

POLL_SECONDS: Final = 0.5
MAX_CATCH_UP: Final = 300  # per job and round: after a longer outage the older runs are skipped
TIMEOUT_SECONDS: Final = 2.0
MIN_SLEEP: Final = 0.005


Sender = Callable[[BeatJob, float, str], None]  # (job, slot, task id); raises when not sent


class CelerySender:
    """Sends a job's task by name through a bare Celery app bound to the broker URL (no app code)."""

    RETRY_POLICY: Final = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}

    def __init__(self, broker_url: str, *, timeout: float = TIMEOUT_SECONDS, clock: Callable[[], float] = time.time):
        from celery import Celery

        self.clock = clock
        self.app = Celery("celery-operator-beat", broker=broker_url, set_as_current=False)
        self.app.conf.update(
            broker_connection_timeout=timeout,
            broker_connection_retry_on_startup=False,
            task_publish_retry_policy=self.RETRY_POLICY,
            broker_transport_options={"socket_timeout": timeout, "socket_connect_timeout": timeout}
            if is_redis_url(broker_url) else {},
        )

    def __call__(self, job: BeatJob, slot: float, identifier: str) -> None:
        options: dict[str, Any] = {}
        if job.queue:
            options["queue"] = job.queue
        if job.expires_seconds:
            options["expires"] = datetime.fromtimestamp(slot + job.expires_seconds, timezone.utc)
        self.app.send_task(job.task, args=list(job.args), kwargs=dict(job.kwargs), task_id=identifier,
                           add_to_parent=False, retry=True, retry_policy=self.RETRY_POLICY, **options)

    def close(self) -> None:
        self.app.close()


def default_instance() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Beat:
    """The loop. `step()` is one round (tests drive it with their own clock); `run()` loops until stopped."""

    def __init__(self, store: BeatStore, send: Sender, *, namespace: str, instance: str | None = None,
                 clock: Callable[[], float] = time.time, max_catch_up: int = MAX_CATCH_UP, lease: bool = True,
                 poll_seconds: float = POLL_SECONDS, secrets: tuple[str, ...] = (),
                 liveness: Liveness | None = None):
        self.store = store
        self.send = send
        self.namespace = namespace
        self.instance = instance or default_instance()
        self.clock = clock
        self.max_catch_up = max_catch_up
        self.lease = lease
        self.poll_seconds = poll_seconds
        self.secrets = tuple(secrets) + (store.url,)  # URLs whose passwords never reach a log line
        self.liveness = liveness or Liveness()
        self.leading = False
        self.sent = 0
        self._parsed: dict[str, tuple[str, BeatJob | None]] = {}

    # --- one round ---------------------------------------------------------------------------

    def _heartbeat(self, now: float, jobs: int) -> str:
        return json.dumps({"instance": self.instance, "at": round(now, 3), "jobs": jobs, "sent": self.sent})

    def _jobs(self, raw: Mapping[str, str]) -> list[BeatJob]:
        jobs = []
        for name in sorted(raw):
            text = raw[name]
            cached = self._parsed.get(name)
            if cached is None or cached[0] != text:
                try:
                    job: BeatJob | None = parse_job(name, text)
                except ValueError as error:
                    log.error("cannot run %s: %s", name, error)
                    job = None
                self._parsed[name] = cached = (text, job)
            if cached[1] is not None:
                jobs.append(cached[1])
        for gone in set(self._parsed) - set(raw):
            del self._parsed[gone]
        return jobs

    def step(self) -> float:
        """One round; returns how long to wait before the next."""
        now = self.clock()
        state = self.store.poll(self.instance, self._heartbeat(now, len(self._parsed)), lease=self.lease)
        if not state.leading:
            if self.leading:
                log.warning("lost the leader lease to another beat; standing by")
            self.leading = False
            return self.poll_seconds
        if not self.leading:
            log.info("leading: sending the schedule of %d job(s)", len(state.jobs))
            self.leading = True
        wake = now + self.poll_seconds
        for job in self._jobs(state.jobs):
            if job.suspend:
                continue
            upcoming = self._run_job(job, state.fired.get(job.name), now)
            if upcoming is not None:
                wake = min(wake, upcoming)
        return max(MIN_SLEEP, wake - self.clock())

    def _run_job(self, job: BeatJob, fired: float | None, now: float) -> float | None:
        """Claim and send the job's due slots; return its next slot."""
        after = max(fired if fired is not None else float("-inf"), job.active_since)
        slots = due_slots(job.schedule, after, now, self.max_catch_up)
        if slots:
            first = next_slot(job.schedule, after)
            if first is not None and first < slots[0]:
                log.warning("%s: more than %d runs were missed; catching up from %s (older runs skipped)",
                            job.name, self.max_catch_up, format_slot(slots[0]))
        for slot in slots:
            outcome, before = self.store.claim(job.name, slot, job.raw)
            if outcome == STALE:  # changed, suspended or removed since this round read it
                return None
            if outcome == ALREADY_CLAIMED:  # another beat has sent it (or a later one)
                continue
            if job.expires_seconds and slot + job.expires_seconds < now:
                log.info("%s: run %s expired (expiresSeconds=%d) before it could be sent; skipped",
                         job.name, format_slot(slot), job.expires_seconds)
                continue
            identifier = task_id(self.namespace, job.name, slot)
            try:
                self.send(job, slot, identifier)
            except Exception as error:  # noqa: BLE001 - give the slot back, retry next round
                self.liveness.progressed()
                self.store.unclaim(job.name, slot, before)
                log.error("%s: sending run %s failed, will retry: %s", job.name, format_slot(slot),
                          self._scrub(f"{type(error).__name__}: {error}"))
                return now + self.poll_seconds
            self.sent += 1
            self.liveness.progressed()
            log.info("sent %s run %s: task %s id %s", job.name, format_slot(slot), job.task, identifier)
        return next_slot(job.schedule, max(after, now))

    def _scrub(self, text: str) -> str:
        return scrub(text, *self.secrets)

    # --- the loop ----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        backoff = self.poll_seconds
        failing = False
        while not stop.is_set():
            try:
                wait = self.step()
                if failing:
                    log.info("the state store answers again")
                failing, backoff = False, self.poll_seconds
            except (redis.RedisError, OSError) as error:
                if not failing:
                    log.error("cannot reach the state store %s: %s", redact(self.store.url),
                              self._scrub(f"{type(error).__name__}: {error}"))
                failing = True
                wait, backoff = backoff, min(backoff * 2, 5.0)
            self.liveness.progressed(back_within=wait)
            stop.wait(wait)
        if self.leading and self.lease:
            try:
                self.store.release(self.instance)
                log.info("released the leader lease")
            except (redis.RedisError, OSError):
                pass  # it expires by itself
