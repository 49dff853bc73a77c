"""The beat program: send every due run of a TaskQueue's PeriodicJobs exactly once.

Every ~0.5 s (sooner when a slot is due sooner) the beat makes one pipelined round trip to the
state Redis: renew (or try to take) the leader lease, refresh the heartbeat when leading, and read
the `jobs` and `fired` hashes. For every job not suspended it computes the slots due after
max(fired, activeSince) up to now (runs missed while no beat ran are caught up, oldest first, at
most `max_catch_up` per job), and for each slot:

1. CLAIM it with one Lua script: fired[job] = slot, only if slot > fired[job] and the job's
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
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import naming
from ..broker import _scrub, redact
from .jobs import BeatJob, format_fired, parse_fired, parse_job, task_id
from .schedule import due_slots, format_slot, next_slot

log = logging.getLogger("celery_operator.beat")

POLL_SECONDS: Final = 0.5
LEASE_MS: Final = 5000
HEARTBEAT_MS: Final = 10_000  # the operator calls the beat gone once the heartbeat key expired
MAX_CATCH_UP: Final = 300  # per job and round: after a longer outage the older runs are skipped
TIMEOUT_SECONDS: Final = 2.0
MIN_SLEEP: Final = 0.005

CLAIMED, ALREADY_CLAIMED, STALE = 1, 0, -1

# KEYS: jobs, fired. ARGV: job, slot, the definition the beat acted on.
# Returns {outcome, the value of fired[job] before}: 1 claimed, 0 already claimed, -1 stale definition.
CLAIM_SCRIPT: Final = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[3] then return {-1, ''} end
local last = redis.call('HGET', KEYS[2], ARGV[1])
if last and tonumber(last) >= tonumber(ARGV[2]) then return {0, last} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return {1, last or ''}
"""
# KEYS: fired. ARGV: job, the slot claimed, the value before it ('' = none). Undo only our own claim.
UNCLAIM_SCRIPT: Final = """
local last = redis.call('HGET', KEYS[1], ARGV[1])
if not last or tonumber(last) ~= tonumber(ARGV[2]) then return 0 end
if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[1]) else redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end
return 1
"""
# KEYS: leader, heartbeat. ARGV: me, lease ms, heartbeat value, heartbeat ms. 1 = leading.
LEASE_SCRIPT: Final = """
local holder = redis.call('GET', KEYS[1])
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
else
  return 0
end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
return 1
"""
# KEYS: leader, heartbeat. ARGV: me.
RELEASE_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"""


@dataclass(frozen=True)
class Keys:
    jobs: str
    fired: str
    leader: str
    heartbeat: str

    @classmethod
    def of(cls, prefix: str) -> "Keys":
        return cls(jobs=prefix + naming.BEAT_JOBS_KEY, fired=prefix + naming.BEAT_FIRED_KEY,
                   leader=prefix + naming.BEAT_LEADER_KEY, heartbeat=prefix + naming.BEAT_HEARTBEAT_KEY)


@dataclass(frozen=True)
class Round:
    leading: bool
    jobs: dict[str, str]
    fired: dict[str, float]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StateStore:
    """The beat's side of the state Redis: one pipelined round trip per round, plus the claims."""

    def __init__(self, url: str, prefix: str, *, timeout: float = TIMEOUT_SECONDS):
        self.url = url
        self.keys = Keys.of(prefix)
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)), retry_on_timeout=False,
        )
        self._claim = self.client.register_script(CLAIM_SCRIPT)
        self._unclaim = self.client.register_script(UNCLAIM_SCRIPT)
        self._lease = self.client.register_script(LEASE_SCRIPT)
        self._release = self.client.register_script(RELEASE_SCRIPT)

    def poll(self, instance: str, heartbeat: str, *, lease: bool = True) -> Round:
        pipe = self.client.pipeline(transaction=False)
        if lease:
            self._lease(keys=[self.keys.leader, self.keys.heartbeat],
                        args=[instance, LEASE_MS, heartbeat, HEARTBEAT_MS], client=pipe)
        else:  # contention mode (tests): every beat leads, the claims alone keep runs unique
            pipe.set(self.keys.heartbeat, heartbeat, px=HEARTBEAT_MS)
        pipe.hgetall(self.keys.jobs)
        pipe.hgetall(self.keys.fired)
        leading, jobs, fired = pipe.execute()
        return Round(
            leading=bool(leading) if lease else True,
            jobs={_text(k): _text(v) for k, v in jobs.items()},
            fired={_text(k): value for k, v in fired.items() if (value := parse_fired(_text(v))) is not None},
        )

    def claim(self, job: str, slot: float, definition: str) -> tuple[int, str]:
        """(CLAIMED | ALREADY_CLAIMED | STALE, the value of fired[job] before: '' = none)."""
        outcome, before = self._claim(keys=[self.keys.jobs, self.keys.fired],
                                      args=[job, format_fired(slot), definition])
        return int(outcome), _text(before)

    def unclaim(self, job: str, slot: float, before: str) -> bool:
        """Give a claimed slot back (fired[job] = `before`), unless fired moved on since."""
        return bool(self._unclaim(keys=[self.keys.fired], args=[job, format_fired(slot), before]))

    def release(self, instance: str) -> None:
        self._release(keys=[self.keys.leader, self.keys.heartbeat], args=[instance])

    def close(self) -> None:
        self.client.close()


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
            if broker_url.split("://", 1)[0].lower() in ("redis", "rediss") else {},
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

    def __init__(self, store: StateStore, send: Sender, *, namespace: str, instance: str | None = None,
                 clock: Callable[[], float] = time.time, max_catch_up: int = MAX_CATCH_UP, lease: bool = True,
                 poll_seconds: float = POLL_SECONDS, secrets: tuple[str, ...] = ()):
        self.store = store
        self.send = send
        self.namespace = namespace
        self.instance = instance or default_instance()
        self.clock = clock
        self.max_catch_up = max_catch_up
        self.lease = lease
        self.poll_seconds = poll_seconds
        self.secrets = tuple(secrets) + (store.url,)  # URLs whose passwords never reach a log line
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
                self.store.unclaim(job.name, slot, before)
                log.error("%s: sending run %s failed, will retry: %s", job.name, format_slot(slot),
                          self._scrub(f"{type(error).__name__}: {error}"))
                return now + self.poll_seconds
            self.sent += 1
            log.info("sent %s run %s: task %s id %s", job.name, format_slot(slot), job.task, identifier)
        return next_slot(job.schedule, max(after, now))

    def _scrub(self, text: str) -> str:
        for url in self.secrets:
            text = _scrub(text, url)
        return text

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
            stop.wait(wait)
        if self.leading and self.lease:
            try:
                self.store.release(self.instance)
                log.info("released the leader lease")
            except (redis.RedisError, OSError):
                pass  # it expires by itself
