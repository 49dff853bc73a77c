"""The Redis state of a TaskQueue's beat: where it lives, its keys, and the two sides that use it.

Where: on the broker when the broker is Redis, else on the small `<tq>-beat-state` Redis the
operator runs for the TaskQueue (`lives_on_broker`, `locate`). One TaskQueue's keys share the
prefix `naming.beat_key_prefix(namespace, taskqueue)`:

- hash `jobs`: PeriodicJob name -> JSON definition (beat/jobs.py), written by the operator only;
- hash `fired`: PeriodicJob name -> the last slot sent (epoch seconds), written by the beat only;
- `leader`: the beat instance that may send (a lease with a TTL);
- `beat-heartbeat`: the leading beat's last report (with a TTL): the operator's sign that a beat runs.

Two sides, each one class over the same `Keys`:

- `BeatStateStore`, the operator's (a port of its Runtime): read the state, compare-and-set
  entries of `jobs`, remove one job, delete everything of a TaskQueue. Clients are kept per URL
  and dropped when their URL has not been used for a while.
- `BeatStore`, the beat pod's: one pipelined round trip per round (lease, heartbeat, `jobs`,
  `fired`), and the atomic claim of a slot (see runner.py).

Every I/O call raises BrokerUnavailable (operator side) or redis' own errors (beat side, whose
loop backs off on them); no password reaches a message or a repr.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import redis

from .. import naming
from ..broker.connections import DEFAULT_TIMEOUT, redis_client
from ..broker.urls import BrokerUnavailable, is_redis_url, redact
from .jobs import decode_entry, format_fired, parse_fired

LEASE_MS: Final = 5000
HEARTBEAT_MS: Final = 10_000  # the operator calls the beat gone once the heartbeat key expired
CLIENT_IDLE_SECONDS: Final = 600.0


@dataclass(frozen=True)
class Keys:
    jobs: str
    fired: str
    leader: str
    heartbeat: str

    @classmethod
    def of(cls, prefix: str) -> Keys:
        return cls(jobs=prefix + "jobs", fired=prefix + "fired", leader=prefix + "leader",
                   heartbeat=prefix + "beat-heartbeat")

    @property
    def every(self) -> tuple[str, str, str, str]:
        return self.jobs, self.fired, self.leader, self.heartbeat


@dataclass(frozen=True)
class StateLocation:
    """Where a TaskQueue's beat keeps its schedule: a Redis URL (it holds a password) and the key prefix."""

    url: str
    prefix: str

    def __repr__(self) -> str:
        return f"StateLocation(url={redact(self.url)!r}, prefix={self.prefix!r})"

    @property
    def keys(self) -> Keys:
        return Keys.of(self.prefix)


def lives_on_broker(broker_url: str) -> bool:
    """A Redis broker holds the state itself; any other broker gets a `<tq>-beat-state` Redis."""
    return is_redis_url(broker_url)


def locate(namespace: str, taskqueue: str, broker_url: str | None,
           beat_state_url: str | None) -> StateLocation | None:
    """Where the TaskQueue's state lives, given its broker URL and the URL of its `<tq>-beat-state`
    Redis; None while the one it needs is not known (its Secret not there yet)."""
    if broker_url is None:
        return None
    url = broker_url if lives_on_broker(broker_url) else beat_state_url
    return StateLocation(url=url, prefix=naming.beat_key_prefix(namespace, taskqueue)) if url else None


@dataclass(frozen=True)
class BeatState:
    """What Redis holds for one TaskQueue's beat (or one job of it)."""

    jobs: dict[str, str]
    fired: dict[str, str]
    heartbeat: dict[str, Any] | None  # the leading beat's last report; None = no beat leads (expired)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _heartbeat(value: bytes | str | None) -> dict[str, Any] | None:
    """The leading beat's report; an unreadable one still says a beat leads."""
    return None if value is None else (decode_entry(value) or {})


# --- the operator's side --------------------------------------------------------------------------

# KEYS: jobs, fired. ARGV: (name, expected, new) triples, '' = absent. Each write happens only if
# the entry is still what the caller read, so two writers (a TaskQueue's sync and a PeriodicJob's
# handler) never overwrite each other's newer value; a removal also forgets the job's `fired`.
WRITE_JOBS_SCRIPT: Final = """
local skipped = {}
for i = 1, #ARGV, 3 do
  local name, expected, new = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local current = redis.call('HGET', KEYS[1], name)
  if not current then current = '' end
  if current ~= expected then
    skipped[#skipped + 1] = name
  elseif new == '' then
    redis.call('HDEL', KEYS[1], name)
    redis.call('HDEL', KEYS[2], name)
  else
    redis.call('HSET', KEYS[1], name, new)
  end
end
return skipped
"""


class BeatStateStore:
    """The operator's reads and writes of beat state, for any TaskQueue. Thread-safe."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, clock: Any = time.monotonic):
        self._timeout = timeout
        self._clock = clock
        self._clients: dict[str, tuple[redis.Redis, Any, float]] = {}
        self._lock = threading.Lock()

    def _client(self, url: str) -> tuple[redis.Redis, Any]:
        now = self._clock()
        with self._lock:
            for other, (client, _script, used) in list(self._clients.items()):
                if now - used > CLIENT_IDLE_SECONDS:
                    del self._clients[other]
                    client.close()
            entry = self._clients.get(url)
            if entry is None:
                client = redis_client(url, self._timeout, max_connections=8)
                entry = (client, client.register_script(WRITE_JOBS_SCRIPT), now)
            self._clients[url] = (entry[0], entry[1], now)
            return entry[0], entry[1]

    def read(self, location: StateLocation, job: str | None = None) -> BeatState:
        """One pipelined read of `jobs`, `fired` and the heartbeat (of one job only, with `job`)."""
        keys = location.keys
        try:
            client, _ = self._client(location.url)
            pipe = client.pipeline(transaction=False)
            if job is None:
                pipe.hgetall(keys.jobs)
                pipe.hgetall(keys.fired)
            else:
                pipe.hget(keys.jobs, job)
                pipe.hget(keys.fired, job)
            pipe.get(keys.heartbeat)
            jobs, fired, heartbeat = pipe.execute()
        except (redis.RedisError, OSError) as error:
            raise BrokerUnavailable(location.url, "cannot read the beat's schedule state", error) from None
        if job is not None:
            jobs = {} if jobs is None else {job: jobs}
            fired = {} if fired is None else {job: fired}
        return BeatState(jobs={_text(k): _text(v) for k, v in jobs.items()},
                         fired={_text(k): _text(v) for k, v in fired.items()},
                         heartbeat=_heartbeat(heartbeat))

    def write_jobs(self, location: StateLocation, upserts: Mapping[str, tuple[str | None, str]],
                   removals: Mapping[str, str | None]) -> list[str]:
        """Compare-and-set entries of `jobs`: upserts name -> (the value read, None = absent; the new
        value), removals name -> the value read. Returns the names skipped because somebody changed
        them since."""
        args: list[str] = []
        for name, (expected, new) in upserts.items():
            args += [name, expected or "", new]
        for name, expected in removals.items():
            args += [name, expected or "", ""]
        if not args:
            return []
        keys = location.keys
        try:
            _, script = self._client(location.url)
            skipped = script(keys=[keys.jobs, keys.fired], args=args)
        except (redis.RedisError, OSError) as error:
            raise BrokerUnavailable(location.url, "cannot write the beat's schedule", error) from None
        return [_text(name) for name in skipped or []]

    def remove_job(self, location: StateLocation, job: str) -> bool:
        """Forget one job at once (its PeriodicJob was deleted, moved or made invalid); False when
        it was not there."""
        keys = location.keys
        try:
            client, _ = self._client(location.url)
            pipe = client.pipeline(transaction=True)
            pipe.hdel(keys.jobs, job)
            pipe.hdel(keys.fired, job)
            removed, _ = pipe.execute()
        except (redis.RedisError, OSError) as error:
            raise BrokerUnavailable(location.url, "cannot remove a job from the beat's schedule", error) from None
        return bool(removed)

    def delete(self, location: StateLocation) -> None:
        """Remove every key of one TaskQueue's beat state (the TaskQueue is being deleted): a beat
        still running until its pod is collected finds no job to send."""
        try:
            client, _ = self._client(location.url)
            client.delete(*location.keys.every)
        except (redis.RedisError, OSError) as error:
            raise BrokerUnavailable(location.url, "cannot remove the beat's schedule state", error) from None

    def close(self) -> None:
        with self._lock:
            for client, _script, _used in self._clients.values():
                client.close()
            self._clients.clear()


# --- the beat's side ------------------------------------------------------------------------------

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
class Round:
    leading: bool
    jobs: dict[str, str]
    fired: dict[str, float]


class BeatStore:
    """The beat pod's side of one TaskQueue's state: one pipelined round trip per round, plus the claims."""

    def __init__(self, location: StateLocation, *, timeout: float = DEFAULT_TIMEOUT):
        self.location = location
        self.keys = location.keys
        self.client = redis_client(location.url, timeout)
        self._claim = self.client.register_script(CLAIM_SCRIPT)
        self._unclaim = self.client.register_script(UNCLAIM_SCRIPT)
        self._lease = self.client.register_script(LEASE_SCRIPT)
        self._release = self.client.register_script(RELEASE_SCRIPT)

    def __repr__(self) -> str:
        return f"BeatStore({self.location!r})"

    @property
    def url(self) -> str:
        return self.location.url

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
