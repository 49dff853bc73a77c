"""All broker I/O: queue depth, reserved messages, tasks in flight, busy workers. Sync API with
timeouts everywhere; the autoscaler calls it from a worker thread.

What is measured, per autoscaled queue Q:

- `pending`: messages waiting in the broker.
  Redis: LLEN of `Q` plus kombu's priority lists `Q\\x06\\x16<n>` for n in 1..9. Kombu's default
  `priority_steps` are 0,3,6,9 (a priority-5 message lands in `Q\\x06\\x163`), but an app may set
  other steps (e.g. `list(range(10))`), and the operator cannot see the app's transport options.
  Celery priorities are 0..9 and kombu names a list by the step it maps to, so 1..9 covers every
  configuration. Per queue the script runs LLEN of `Q` and one EXISTS over the nine priority keys,
  and LLENs those only when one exists: an app without priorities costs 2 commands per queue.
  RabbitMQ: `message_count` of a passive `queue.declare`: the messages *ready* for delivery; a
  missing queue counts 0 (nothing was ever sent to it).
- `reserved`: messages a worker has received but not started (prefetched).
  Redis: kombu keeps every delivered-but-unacked message in the hash `unacked` (tag ->
  JSON `[message, exchange, routing_key]`). With Celery's default early ack a task is acked when
  it *starts*, so the hash holds exactly the reserved-not-started messages. They are attributed to
  queues the way kombu routes them back on restore: exchange "" -> the routing key is the queue
  (what Celery sends by default), else the exchange's bindings in `_kombu.binding.<exchange>`
  (direct: equal key; topic: kombu's wildcard rules). The hash is bounded: with prefetch multiplier
  1 a worker reserves at most `concurrency` messages, and only while all its processes are busy
  (checked: 5 tasks on one worker with concurrency 2 -> 2 running, 2 in `unacked`, 1 in the list).
  Counting it costs one HVALS inside the same server call. With `acks_late` tasks a running task
  stays in the hash too and is counted both as reserved and as active (over-counts, never under).
  RabbitMQ: not measured (`reserved` is 0, `AmqpDepthReader.counts_reserved` is False). The
  protocol reports only ready messages; the unacked count needs the management plugin's HTTP API,
  which the operator cannot assume. Justification: with early ack and the fair prefork scheduler
  a worker holds reserved messages only while every one of its processes is running a task, so
  such a worker is already busy (its pod is protected from scale-down through `active`), and its
  reserved messages are bound to it anyway: extra replicas would not start them sooner. The
  under-count is at most concurrency x prefetch multiplier per fully busy worker.
- in flight (executing): no broker structure holds a running task (acked at start). Workers send
  `worker-heartbeat` events every 2 s on the `celeryev` exchange, also without `-E`, and the
  operator names workers `<queue>@<pod>`: `HeartbeatMonitor` keeps the latest per worker.

How the autoscaler puts it together (all calls blocking, bounded by `timeout`; run them in a thread):

    reader = depth_reader_for(url)                    # one per broker, kept across ticks
    monitor = HeartbeatMonitor(url); monitor.start()  # one per broker, kept across ticks
    depths = reader.read(queues)                      # BrokerUnavailable -> scaling.Unknown()
    activity = monitor.activity(q, pods=pod_names)    # BrokerUnavailable -> scaling.Unknown()
    Observation(pending=depths[q].pending,
                in_flight=depths[q].reserved + activity.in_flight,
                busy_workers=len(activity.busy_pods))
    # only when a scale-down is about to happen, fresh from the workers themselves:
    busy_workers(url, [worker_hostname(q, pod) for pod in pod_names], timeout=1.0)

Facts verified on this machine (celery 5.7.0, kombu 5.7.0, redis 7.0, RabbitMQ 3.10.8; the
integration tests in tests/integration/test_broker.py check all but the two marked "by hand"):

- `active` in a heartbeat is `len(worker.state.active_requests)`: tasks a pool process has
  accepted and not finished. Reserved (prefetched) tasks are not in it: with 5 tasks on one
  prefork worker (concurrency 2, prefetch multiplier 1) heartbeats said active=2 while `unacked`
  held 2 and the list 1. `processed` counts tasks *accepted* so far (2 while the first 2 ran).
- A prefork worker keeps heartbeating every 2 s while its processes run long tasks (the main
  process is free), and answers `inspect().active()` then. A threads-pool worker too (by hand,
  with a CPU-bound task).
- A solo-pool worker sends no heartbeat at all while it runs a task (its only thread is busy),
  reports active=0 around it, and cannot answer inspect. Hence "silent" workers: a worker whose
  heartbeats stopped (> 2 x freq + 1 s) without a `worker-offline` counts as busy with >= 1 task
  until it speaks again, says goodbye, is forgotten (`forget_after`), or is not among the
  caller's `pods` (a killed pod is gone from the Deployment, and a restarted container of the
  same pod announces itself again with worker-online).
- A `heartbeat` control command (the "wakeup" Flower and `celery events` send) makes workers
  emit a `worker-heartbeat` with `freq=5` and *no* `active`/`processed`: such an event refreshes
  liveness only and never resets a worker's active count (this monitor sends no wakeup). By hand:
  celery/worker/control.py `heartbeat`, and the table test feeds such an event.
- A warm shutdown (SIGTERM) sends `worker-offline`: the monitor drops the worker at once.
- `inspect(destination=[...])` returns as soon as every named worker replied (kombu sets the
  reply limit to the number of destinations), so `busy_workers` waits the timeout only for
  workers that do not answer.
- RabbitMQ: heartbeats arrive the same way (topic exchange `celeryev`); a passive declare counts
  ready messages only (5 tasks, 2 running, 2 prefetched -> message_count 1); a passive declare of
  a missing queue is a channel error 404 that closes the channel (the reader opens a new one).
- Timeouts: kombu's `Connection.connect()` retries once after sleeping 2 s, and kombu's pidbox
  publishes with `retry=True` and no limit; this module connects with `max_retries=0` and
  publishes control commands with a bounded policy, so a dead broker fails within about the
  timeout (Redis: at least 1.5 s, longer than kombu's 1 s BRPOP for replies).

Cost (bench/bench_scaler_tick.py, 400 queues on one Redis): one round trip per read either way.
The default is a server-side Lua script (one EVALSHA returning pending and reserved per queue):
about 1.5 ms of operator CPU per read, 3-4 ms of Redis time (12 ms with 2000 reserved messages
to attribute). A `transaction=False` pipeline of the same LLENs plus HVALS costs the operator about
30 ms of CPU (45 ms with 2000 reserved, whose bodies it must download) and is only the fallback
when a server refuses scripts (ACL, some managed Redis); method="auto" switches to it by itself.
RabbitMQ needs one round trip per queue (AMQP has no batched declare); a TaskQueue has <= 50 queues.

Secrets: the broker URL carries a password. It never appears in an exception, log line or thread
name from this module: `redact(url)` replaces it with `***`, and error texts are scrubbed of it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, Self
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import kombu
import redis
from amqp.exceptions import NotFound as AmqpNotFound
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import naming

__all__ = [
    "AmqpDepthReader",
    "BeatState",
    "BrokerUnavailable",
    "delete_beat_state",
    "DepthReader",
    "HeartbeatMonitor",
    "HeartbeatTable",
    "QueueActivity",
    "QueueDepth",
    "RedisDepthReader",
    "WorkerState",
    "busy_workers",
    "depth_reader_for",
    "is_redis_url",
    "read_beat_state",
    "redact",
    "remove_beat_job",
    "split_worker_hostname",
    "worker_hostname",
    "write_beat_jobs",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 2.0
REDIS_SCHEMES: Final = ("redis", "rediss")
AMQP_SCHEMES: Final = ("amqp", "amqps", "pyamqp")
# kombu's Redis transport names (kombu/transport/redis.py, Channel attributes).
KOMBU_PRIORITY_SEP: Final = "\x06\x16"
KOMBU_UNACKED_KEY: Final = "unacked"
KOMBU_BINDING_PREFIX: Final = "_kombu.binding."
MAX_PRIORITY_LEVEL: Final = 9  # Celery priorities are 0..9; lists exist for the steps 1..9 at most


# --- secrets ------------------------------------------------------------------------------------

_SECRET_QUERY_KEYS: Final = frozenset({"password", "passwd", "pass", "secret", "token", "sasl_password"})


def redact(url: str) -> str:
    """The URL with its password (and password-like query values) replaced by `***`.

    `redis://:s3cret@redis:6379/0` -> `redis://:***@redis:6379/0`. kombu failover lists
    (`url1;url2`) are redacted one by one. Something unparsable becomes `<unparsable broker URL>`.
    """
    if ";" in url:
        return ";".join(redact(part) for part in url.split(";"))
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, has_password, _password = userinfo.partition(":")
            netloc = f"{user}:***@{hostport}" if has_password else f"{userinfo}@{hostport}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(key.lower() in _SECRET_QUERY_KEYS for key, _ in pairs):
                query = urlencode(
                    [(k, "***" if k.lower() in _SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*"
                )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparsable broker URL>"


def _secrets_of(url: str) -> list[str]:
    """Every spelling of every secret in `url` (raw and percent-decoded), longest first."""
    found: set[str] = set()
    for part in url.split(";"):
        try:
            parts = urlsplit(part)
        except ValueError:
            continue
        userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
        if ":" in userinfo:
            found.add(userinfo.partition(":")[2])
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key.lower() in _SECRET_QUERY_KEYS:
                found.add(value)
    found |= {unquote(s) for s in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def _scrub(text: str, url: str) -> str:
    text = text.replace(url, redact(url))
    for secret in _secrets_of(url):
        text = text.replace(secret, "***")
    return text


class BrokerUnavailable(Exception):
    """The broker could not be read (within the timeout). Callers hold replicas where they are.

    The message names the broker by its redacted URL and never holds the password. The original
    exception is not chained (`__cause__` is None): its text, scrubbed, is in the message.
    """

    def __init__(self, url: str, what: str, error: BaseException | str | None = None):
        detail = ""
        if isinstance(error, BaseException):
            detail = f": {type(error).__name__}: {error}" if str(error) else f": {type(error).__name__}"
        elif error:
            detail = f": {error}"
        self.broker = redact(url)
        super().__init__(_scrub(f"broker {self.broker}: {what}{detail}", url))


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def probe(url: str, timeout: float) -> str | None:
    """Is the broker reachable from the operator? None when it answers, else why not (no password).

    One short connection per check: Redis answers PING, an AMQP broker completes its handshake.
    """
    try:
        if _scheme(url) in REDIS_SCHEMES:
            client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
            try:
                client.ping()
            finally:
                client.close()
        else:
            connection = _connection(url, timeout)
            try:
                _connect(connection)
            finally:
                _release(connection)
    except Exception as error:  # noqa: BLE001 - every failure means the same to the caller: not reachable now
        return _scrub(f"broker not reachable: {type(error).__name__}: {error}", url)
    return None


# --- worker names ------------------------------------------------------------------------------


def worker_hostname(queue: str, pod: str) -> str:
    """The Celery node name the operator gives a worker: `--hostname <queue>@%h` in pod `pod`."""
    return f"{queue}@{pod}"


def split_worker_hostname(hostname: str) -> tuple[str, str] | None:
    """(queue, pod) of `<queue>@<pod>`; None for a name of another shape (e.g. `celery@host`
    would be queue "celery", which is fine: it simply matches no autoscaled queue of ours)."""
    queue, at, pod = hostname.partition("@")
    if not at or not queue or not pod:
        return None
    return queue, pod


# --- queue depth --------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueDepth:
    pending: int  # waiting in the broker
    reserved: int = 0  # received by a worker, not started (0 where the broker cannot tell)


class DepthReader(Protocol):
    counts_reserved: bool

    def read(self, queues: Sequence[str]) -> dict[str, QueueDepth]: ...

    def close(self) -> None: ...


def depth_reader_for(url: str, *, timeout: float = DEFAULT_TIMEOUT, **options: Any) -> DepthReader:
    """The depth reader for a broker URL: Redis (redis://, rediss://) or AMQP (amqp://, amqps://)."""
    scheme = _scheme(url)
    if scheme in REDIS_SCHEMES:
        return RedisDepthReader(url, timeout=timeout, **options)
    if scheme in AMQP_SCHEMES:
        return AmqpDepthReader(url, timeout=timeout, **options)
    raise ValueError(f"unsupported broker URL scheme {scheme!r} in {redact(url)}")


# One server call for all queues of a broker: pending (sum of the priority lists) and reserved
# (the `unacked` hash attributed to queues) for every queue named in ARGV[7..].
_DEPTH_SCRIPT: Final = r"""
local prefix, sep = ARGV[1], ARGV[2]
local levels = tonumber(ARGV[3])
local count_reserved = ARGV[4] == '1'
local unacked_key, binding_prefix = ARGV[5], ARGV[6]
local n = #ARGV - 6
local out, index, suffix = {}, {}, {}
for p = 1, levels do suffix[p] = sep .. p end
local function len(key)
  local r = redis.pcall('LLEN', key)
  if type(r) == 'number' then return r end
  return 0
end
for i = 1, n do
  local q = ARGV[i + 6]
  index[q] = i
  local key = prefix .. q
  local total = len(key)
  if levels > 0 then
    -- one EXISTS for the priority lists; LLEN them only when one exists (rarely all nine)
    local keys = {}
    for p = 1, levels do keys[p] = key .. suffix[p] end
    local some = redis.pcall('EXISTS', unpack(keys))
    if type(some) == 'number' and some > 0 then
      for p = 1, levels do total = total + len(keys[p]) end
    end
  end
  out[i] = total
  out[n + i] = 0
end
if count_reserved then
  -- (exchange, routing key) from the tail `..., "<exchange>", "<routing key>"]` of an `unacked`
  -- value with plain finds (a Lua pattern anchored at the end costs 4x more); cjson otherwise.
  local function route(v)
    local size = #v
    local a, z = string.byte(v, size - 1, size)
    if a == 34 and z == 93 then
      local last
      local pos = string.find(v, '", "', math.max(1, size - 600), true)
      while pos do last = pos; pos = string.find(v, '", "', pos + 1, true) end
      if last then
        local rk = string.sub(v, last + 4, size - 2)
        local i = last - 1
        while i > 1 and string.byte(v, i) ~= 34 do i = i - 1 end
        if i > 1 and string.byte(v, i - 1) ~= 92 then
          local ex = string.sub(v, i + 1, last - 1)
          if not string.find(rk, '["\\]') and not string.find(ex, '\\', 1, true) then return ex, rk end
        end
      end
    end
    local ok, decoded = pcall(cjson.decode, v)
    if ok and type(decoded) == 'table' and type(decoded[3]) == 'string' then
      return type(decoded[2]) == 'string' and decoded[2] or '', decoded[3]
    end
    return nil, nil
  end
  local function topic_pattern(bkey)
    local words = {}
    for word in string.gmatch(bkey .. '.', '([^.]*)%.') do
      if word == '*' then words[#words + 1] = '[^.]+'
      elseif word == '#' then words[#words + 1] = '.-'
      else words[#words + 1] = (string.gsub(word, '[%^%$%(%)%%%.%[%]%*%+%-%?]', '%%%0')) end
    end
    return '^' .. table.concat(words, '%.') .. '$'
  end
  local tables = {}
  local function bindings(exchange)
    local t = tables[exchange]
    if t then return t end
    t = {}
    local members = redis.pcall('SMEMBERS', prefix .. binding_prefix .. exchange)
    if type(members) == 'table' and members.err == nil then
      for _, m in ipairs(members) do
        local a = string.find(m, sep, 1, true)
        if a then
          local b = string.find(m, sep, a + #sep, true)
          if b then
            local bkey, pattern, queue = string.sub(m, 1, a - 1), string.sub(m, a + #sep, b - 1), string.sub(m, b + #sep)
            if index[queue] then
              t[#t + 1] = {bkey, pattern ~= '' and topic_pattern(bkey) or nil, index[queue]}
            end
          end
        end
      end
    end
    tables[exchange] = t
    return t
  end
  local values = redis.pcall('HVALS', prefix .. unacked_key)
  if type(values) == 'table' and values.err == nil then
    for _, v in ipairs(values) do
      local ex, rk = route(v)
      if rk ~= nil then
        if ex == '' then
          local i = index[rk]
          if i then out[n + i] = out[n + i] + 1 end
        else
          for _, b in ipairs(bindings(ex)) do
            if (b[2] == nil and b[1] == rk) or (b[2] ~= nil and string.find(rk, b[2])) then
              out[n + b[3]] = out[n + b[3]] + 1
            end
          end
        end
      end
    end
  end
end
return out
"""

_UNACKED_TAIL = re.compile(r'"([^"\\]*)", "([^"\\]*)"\]$')

RedisMethod = Literal["lua", "pipeline", "auto"]


class RedisDepthReader:
    """Pending and reserved per queue on one Redis broker, in one round trip per read.

    method: "lua" (one EVALSHA, counts done server-side), "pipeline" (one pipelined batch of LLEN
    plus HVALS, counted here), or "auto" (Lua, falling back to the pipeline for good if the server
    refuses scripts). key_prefix: kombu's `global_keyprefix` transport option, if the app sets one.
    """

    counts_reserved = True

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        method: RedisMethod = "auto",
        count_reserved: bool = True,
        priority_levels: int = MAX_PRIORITY_LEVEL,
        key_prefix: str = "",
    ):
        if _scheme(url) not in REDIS_SCHEMES:
            raise ValueError(f"not a Redis URL: {redact(url)}")
        self.url = url
        self.timeout = timeout
        self.method: RedisMethod = method
        self.counts_reserved = count_reserved
        self.priority_levels = priority_levels
        self.key_prefix = key_prefix
        self._lock = threading.Lock()
        self._client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # A stale pooled connection (server restarted) fails at once: retry that once, never a timeout.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            retry_on_timeout=False,
            health_check_interval=0,
            max_connections=2,
        )
        self._script = self._client.register_script(_DEPTH_SCRIPT)
        self._exchanges: set[str] = set()  # non-default exchanges seen in `unacked` (pipeline method)

    def __repr__(self) -> str:
        return f"RedisDepthReader({redact(self.url)!r}, method={self.method!r})"

    def read(self, queues: Sequence[str]) -> dict[str, QueueDepth]:
        names = list(dict.fromkeys(queues))
        if not names:
            return {}
        with self._lock:
            try:
                if self.method == "pipeline":
                    return self._read_pipeline(names)
                try:
                    return self._read_lua(names)
                except redis.ResponseError as error:
                    if self.method == "lua":
                        raise
                    log.warning(
                        "broker %s refused the depth script (%s); reading with a pipeline from now on",
                        redact(self.url), _scrub(str(error), self.url),
                    )
                    self.method = "pipeline"
                    return self._read_pipeline(names)
            except redis.RedisError as error:
                raise BrokerUnavailable(self.url, "cannot read queue depth", error) from None
            except OSError as error:
                raise BrokerUnavailable(self.url, "cannot read queue depth", error) from None

    def _read_lua(self, names: list[str]) -> dict[str, QueueDepth]:
        args = [
            self.key_prefix, KOMBU_PRIORITY_SEP, self.priority_levels, int(self.counts_reserved),
            KOMBU_UNACKED_KEY, KOMBU_BINDING_PREFIX, *names,
        ]
        out = self._script(keys=[], args=args)
        n = len(names)
        return {name: QueueDepth(int(out[i]), int(out[n + i])) for i, name in enumerate(names)}

    def _read_pipeline(self, names: list[str]) -> dict[str, QueueDepth]:
        prefix, levels = self.key_prefix, self.priority_levels
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            key = prefix + name
            pipe.llen(key)
            for level in range(1, levels + 1):
                pipe.llen(f"{key}{KOMBU_PRIORITY_SEP}{level}")
        exchanges = sorted(self._exchanges)
        if self.counts_reserved:
            pipe.hvals(prefix + KOMBU_UNACKED_KEY)
            for exchange in exchanges:
                pipe.smembers(prefix + KOMBU_BINDING_PREFIX + exchange)
        results = pipe.execute(raise_on_error=False)
        per_queue = levels + 1
        pending = {
            name: sum(r for r in results[i * per_queue:(i + 1) * per_queue] if isinstance(r, int))
            for i, name in enumerate(names)
        }
        reserved = dict.fromkeys(names, 0)
        if self.counts_reserved:
            base = len(names) * per_queue
            values = results[base]
            tables = {ex: results[base + 1 + i] for i, ex in enumerate(exchanges)}
            routes = [route for v in (values if isinstance(values, list) else ()) if (route := _unacked_route(v))]
            unknown = {ex for ex, _ in routes if ex and ex not in tables}
            if unknown:  # first sight of an exchange: one extra round trip, then it is in every batch
                self._exchanges |= unknown
                fetch = self._client.pipeline(transaction=False)
                for exchange in sorted(unknown):
                    fetch.smembers(prefix + KOMBU_BINDING_PREFIX + exchange)
                tables.update(zip(sorted(unknown), fetch.execute(raise_on_error=False)))
            _attribute(routes, tables, reserved)
        return {name: QueueDepth(pending[name], reserved[name]) for name in names}

    def close(self) -> None:
        self._client.close()


def _unacked_route(value: bytes | str) -> tuple[str, str] | None:
    """(exchange, routing key) of one `unacked` hash value, reading only its tail when it can."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    match = _UNACKED_TAIL.search(text[-512:])
    if match:
        return match.group(1), match.group(2)
    try:
        decoded = json.loads(text)
        return str(decoded[1] or ""), str(decoded[2])
    except (ValueError, TypeError, IndexError, KeyError):
        return None


_TOPIC_WORDS: Final = {"*": r"[^.]+", "#": r".*?"}


def _topic_regex(binding_key: str) -> re.Pattern[str]:
    # kombu.transport.virtual.exchange.TopicExchange.key_to_pattern
    return re.compile("^" + r"\.".join(_TOPIC_WORDS.get(w) or re.escape(w) for w in binding_key.split(".")) + "$")


def _attribute(
    routes: Iterable[tuple[str, str]], tables: Mapping[str, Any], counts: dict[str, int]
) -> None:
    """Add each (exchange, routing key) to the queues kombu would restore it to."""
    parsed: dict[str, list[tuple[str, re.Pattern[str] | None, str]]] = {}
    for exchange, table in tables.items():
        rows = []
        for member in table if isinstance(table, (set, list)) else ():
            text = member.decode("utf-8", "replace") if isinstance(member, bytes) else member
            parts = text.split(KOMBU_PRIORITY_SEP)
            if len(parts) == 3 and parts[2] in counts:
                rows.append((parts[0], _topic_regex(parts[0]) if parts[1] else None, parts[2]))
        parsed[exchange] = rows
    for exchange, routing_key in routes:
        if not exchange:
            if routing_key in counts:
                counts[routing_key] += 1
            continue
        for binding_key, regex, queue in parsed.get(exchange, ()):
            if (regex is None and binding_key == routing_key) or (regex is not None and regex.match(routing_key)):
                counts[queue] += 1


class AmqpDepthReader:
    """Ready messages per queue on one AMQP broker (RabbitMQ), by passive queue.declare.

    One connection, reused across reads and reopened after a failure. `reserved` is always 0:
    see the module docstring for why that is acceptable with early ack and prefetch multiplier 1.
    """

    counts_reserved = False

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT):
        if _scheme(url) not in AMQP_SCHEMES:
            raise ValueError(f"not an AMQP URL: {redact(url)}")
        self.url = url
        self.timeout = timeout
        self._lock = threading.Lock()
        self._connection: kombu.Connection | None = None
        self._channel: Any = None

    def __repr__(self) -> str:
        return f"AmqpDepthReader({redact(self.url)!r})"

    def _open_channel(self) -> Any:
        if self._connection is None:
            self._connection = kombu.Connection(
                self.url, connect_timeout=self.timeout, transport_options=_transport_options(self.url, self.timeout)
            )
        if self._channel is None:
            _connect(self._connection)
            self._channel = self._connection.channel()
        return self._channel

    def read(self, queues: Sequence[str]) -> dict[str, QueueDepth]:
        names = list(dict.fromkeys(queues))
        if not names:
            return {}
        deadline = time.monotonic() + self.timeout
        with self._lock:
            result: dict[str, QueueDepth] = {}
            try:
                for name in names:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"reading {len(names)} queues took longer than {self.timeout}s")
                    channel = self._open_channel()
                    try:
                        _queue, count, _consumers = channel.queue_declare(queue=name, passive=True)
                    except AmqpNotFound:  # never declared: nothing sent to it yet; the channel is closed now
                        self._channel = None
                        count = 0
                    result[name] = QueueDepth(int(count), 0)
            except Exception as error:  # noqa: BLE001 - any failure means "cannot read": reset and report
                self._reset()
                raise BrokerUnavailable(self.url, "cannot read queue depth", error) from None
            return result

    def _reset(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.collect()
            except Exception as error:  # noqa: BLE001 - a dead connection may fail to close; dropped anyway
                log.debug("closing a broken connection to %s: %s", redact(self.url), type(error).__name__)

    def close(self) -> None:
        with self._lock:
            connection, self._connection, self._channel = self._connection, None, None
            if connection is not None:
                _release(connection)


def _transport_options(url: str, timeout: float, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """kombu transport options bounding every socket operation and every connect retry, plus the
    app's own options where they change names on the broker (Redis `global_keyprefix`,
    `fanout_prefix`, `fanout_patterns`): the operator must listen where the workers talk."""
    options: dict[str, Any] = {"max_retries": 0}  # kombu: one attempt, no 2 s sleep before a retry
    if _scheme(url) in REDIS_SCHEMES:
        # kombu's BRPOP (pidbox replies) blocks for 1 s: a socket timeout must be longer than that.
        options.update(socket_timeout=max(timeout, 1.5), socket_connect_timeout=timeout, health_check_interval=10)
    else:
        options.update(read_timeout=timeout, write_timeout=timeout)
    options.update(extra or {})
    return options


def _release(connection: kombu.Connection) -> None:
    try:
        connection.release()
    except Exception as error:  # noqa: BLE001 - closing a dead connection may fail; it is gone anyway
        log.debug("releasing a broker connection: %s", type(error).__name__)


def _connect(connection: kombu.Connection) -> None:
    """Connect once, no retry (kombu's connect() retries once after sleeping 2 s)."""
    connection.ensure_connection(max_retries=0)


# --- Celery, for events and inspect ---------------------------------------------------------------

_app_lock = threading.Lock()
_app: Any = None


_NO_RETRY_POLICY: Final = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


class _BoundedProducer(kombu.Producer):
    """kombu's pidbox publishes with retry=True and no policy, which retries forever: bound it."""

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["retry_policy"] = _NO_RETRY_POLICY
        return super().publish(*args, **kwargs)


def _celery_app() -> Any:
    """A bare Celery app for the event receiver and inspect. It is bound to no broker: every call
    passes its own connection, and control commands are published on that connection's channel
    (Celery's default would borrow a producer from the app's own pool, i.e. the app's broker)."""
    global _app
    with _app_lock:
        if _app is None:
            from celery import Celery
            from celery.app.control import Control
            from kombu.pidbox import Mailbox

            class BoundedMailbox(Mailbox):
                @contextmanager
                def producer_or_acquire(self, producer: Any = None, channel: Any = None) -> Iterator[Any]:
                    yield producer or _BoundedProducer(channel, auto_declare=False)

            class BoundedControl(Control):
                Mailbox = BoundedMailbox

            _app = Celery("celery-operator", set_as_current=False, control=BoundedControl)
        return _app


def _connection(url: str, timeout: float, transport_options: Mapping[str, Any] | None = None) -> kombu.Connection:
    return kombu.Connection(
        url, connect_timeout=timeout, transport_options=_transport_options(url, timeout, transport_options)
    )


def busy_workers(
    url: str,
    worker_names: Collection[str],
    timeout: float = 1.0,
    *,
    unanswered_are_busy: bool = True,
    transport_options: Mapping[str, Any] | None = None,
) -> set[str]:
    """Which of `worker_names` (`<queue>@<pod>`) are executing a task now, asked right before a
    scale-down with `inspect(destination=worker_names).active()`. It returns as soon as every
    named worker answered, else after `timeout`.

    A worker that does not answer cannot be shown idle: it may be a solo-pool worker inside a task
    (its only thread is busy), so by default it counts as busy. Pass `unanswered_are_busy=False`
    to get only the workers that said they are busy. Raises BrokerUnavailable.
    """
    names = sorted(set(worker_names))
    if not names:
        return set()
    connection = _connection(url, timeout, transport_options)
    try:
        _connect(connection)
        inspector = _celery_app().control.inspect(destination=names, timeout=timeout, connection=connection)
        replies = inspector.active() or {}
    except Exception as error:  # noqa: BLE001 - connection, channel and socket errors alike
        raise BrokerUnavailable(url, "cannot inspect workers", error) from None
    finally:
        _release(connection)
    busy = {name for name, tasks in replies.items() if name in names and tasks}
    if unanswered_are_busy:
        busy |= set(names) - set(replies)
    return busy


# --- heartbeats ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerState:
    hostname: str  # `<queue>@<pod>`
    queue: str | None
    pod: str | None
    active: int  # tasks executing at the last heartbeat (reserved ones excluded)
    processed: int  # tasks accepted since the worker started
    freq: float  # the worker's heartbeat interval, seconds
    timestamp: float  # the worker's own clock at the last heartbeat (epoch seconds)
    age: float  # seconds since the monitor last heard from the worker
    silent: bool  # heartbeats overdue (> 2 x freq + 1 s) without a worker-offline

    @property
    def busy(self) -> bool:
        return self.silent or self.active > 0

    @property
    def in_flight(self) -> int:
        return max(self.active, 1) if self.silent else self.active


@dataclass(frozen=True)
class QueueActivity:
    """What the heartbeats say about one queue's workers."""

    in_flight: int  # tasks executing (a silent worker counts at least 1)
    busy_pods: frozenset[str]  # pods running a task, or silent
    workers: int  # workers known (fresh or silent)


@dataclass
class _Entry:
    pod: str | None
    active: int
    processed: int
    freq: float
    timestamp: float
    seen: float  # the monitor's clock


class HeartbeatTable:
    """The latest heartbeat per worker, and what follows from it at a given time. Thread-safe.

    Fresh workers (heard within 2 x freq + 1 s) count their `active` tasks; silent ones count as
    busy with at least one task (see the module docstring); a worker-offline removes a worker at
    once; a worker silent for `forget_after` seconds is forgotten. Indexed by queue, so a tick over
    many queues costs O(workers), not O(queues x workers).
    """

    def __init__(self, *, forget_after: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        self.forget_after = forget_after
        self.clock = clock
        self._lock = threading.Lock()
        self._queues: dict[str | None, dict[str, _Entry]] = {}  # queue -> hostname -> entry

    @staticmethod
    def _split(hostname: str) -> tuple[str | None, str | None]:
        split = split_worker_hostname(hostname)
        return split if split else (None, None)

    def heartbeat(self, event: Mapping[str, Any]) -> None:
        """A worker-heartbeat or worker-online event."""
        hostname = event.get("hostname")
        if not isinstance(hostname, str):
            return
        queue, pod = self._split(hostname)
        now = self.clock()
        with self._lock:
            workers = self._queues.setdefault(queue, {})
            entry = workers.get(hostname)
            if "active" not in event:  # a wakeup heartbeat (control command): liveness only
                if entry is not None:
                    entry.seen = now
                return
            workers[hostname] = _Entry(
                pod=pod,
                active=int(event.get("active") or 0),
                processed=int(event.get("processed") or 0),
                freq=float(event.get("freq") or 2.0),
                timestamp=float(event.get("timestamp") or 0.0),
                seen=now,
            )

    def offline(self, event: Mapping[str, Any]) -> None:
        """A worker-offline event: the worker shut down (warm or cold, not killed)."""
        hostname = str(event.get("hostname"))
        with self._lock:
            self._queues.get(self._split(hostname)[0], {}).pop(hostname, None)

    def touch_all(self) -> None:
        """After a reconnect: heartbeats missed during the outage must not make workers silent."""
        now = self.clock()
        with self._lock:
            for workers in self._queues.values():
                for entry in workers.values():
                    entry.seen = now

    def _states(self, queue: str | None, pods: Collection[str] | None, every_queue: bool) -> list[WorkerState]:
        now = self.clock()
        states = []
        with self._lock:
            queues = list(self._queues) if every_queue else [queue]
            for name in queues:
                workers = self._queues.get(name)
                if not workers:
                    continue
                for hostname, entry in list(workers.items()):
                    age = now - entry.seen
                    if age > self.forget_after:
                        del workers[hostname]
                        continue
                    if pods is not None and entry.pod not in pods:
                        continue
                    states.append(WorkerState(
                        hostname=hostname, queue=name, pod=entry.pod, active=entry.active,
                        processed=entry.processed, freq=entry.freq, timestamp=entry.timestamp, age=age,
                        silent=age > 2 * entry.freq + 1,
                    ))
        return states

    def workers(self, queue: str | None = None, pods: Collection[str] | None = None) -> list[WorkerState]:
        """Known workers, of one queue or (queue=None) all, sorted by hostname."""
        return sorted(self._states(queue, pods, every_queue=queue is None), key=lambda s: s.hostname)

    def activity(self, queue: str, pods: Collection[str] | None = None) -> QueueActivity:
        states = self._states(queue, pods, every_queue=False)
        return QueueActivity(
            in_flight=sum(w.in_flight for w in states),
            busy_pods=frozenset(w.pod for w in states if w.busy and w.pod),
            workers=len(states),
        )

    def in_flight(self, queue: str, pods: Collection[str] | None = None) -> int:
        return self.activity(queue, pods).in_flight

    def busy_pods(self, queue: str, pods: Collection[str] | None = None) -> set[str]:
        return set(self.activity(queue, pods).busy_pods)


class HeartbeatMonitor:
    """Listens to one broker's worker heartbeats in a background thread (Celery's own event
    receiver, routing key `worker.#`), reconnecting with backoff, and answers per queue:

        monitor = HeartbeatMonitor(url); monitor.start()
        monitor.in_flight("jobs")              # tasks executing on jobs@* workers
        monitor.busy_pods("jobs", pods=...)    # pods of jobs@* workers with a task (or silent)
        monitor.stop()

    Pass `pods` (the queue's current pod names) where you can: it drops workers whose pod is gone.
    The answers raise BrokerUnavailable while the monitor is not connected, and for `warmup`
    seconds after (re)connecting, when not every worker has had the chance to report yet.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        warmup: float = 3.0,
        forget_after: float = 3600.0,
        reconnect_max: float = 10.0,
        poll_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        transport_options: Mapping[str, Any] | None = None,
    ):
        self.url = url
        self.transport_options = dict(transport_options or {})
        self.timeout = timeout
        self.warmup = warmup
        self.reconnect_max = reconnect_max
        self.poll_interval = poll_interval
        self.clock = clock
        self.table = HeartbeatTable(forget_after=forget_after, clock=clock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._receiver: Any = None
        self._state_lock = threading.Lock()
        self._connected_at: float | None = None
        self._ever_connected = False
        self._last_error: str | None = None
        self.events_received = 0

    def __repr__(self) -> str:
        return f"HeartbeatMonitor({redact(self.url)!r})"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"heartbeats {redact(self.url)}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0, wait: bool = True) -> None:
        """Stop listening; with wait=False only ask the thread to stop (it ends within poll_interval),
        so that many monitors stop at once instead of one after another."""
        self._stop.set()
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True
        thread, self._thread = self._thread, None
        if thread is not None and wait:
            thread.join(timeout)
        with self._state_lock:
            self._connected_at = None

    # state

    @property
    def connected(self) -> bool:
        return self._connected_at is not None

    @property
    def ready(self) -> bool:
        connected_at = self._connected_at
        return connected_at is not None and self.clock() - connected_at >= self.warmup

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready:
            if time.monotonic() >= deadline:
                return False
            self._stop.wait(0.05)
        return True

    def _check(self) -> None:
        connected_at = self._connected_at
        if connected_at is None:
            error = f" (last error: {self._last_error})" if self._last_error else ""
            raise BrokerUnavailable(self.url, f"not receiving worker heartbeats{error}")
        if self.clock() - connected_at < self.warmup:
            raise BrokerUnavailable(self.url, "heartbeat monitor warming up after connecting")

    # answers

    def in_flight(self, queue: str, pods: Collection[str] | None = None) -> int:
        """Tasks executing on the queue's workers (silent workers count >= 1). Raises BrokerUnavailable."""
        self._check()
        return self.table.in_flight(queue, pods)

    def busy_pods(self, queue: str, pods: Collection[str] | None = None) -> set[str]:
        """Pods of the queue's workers that run a task or went silent. Raises BrokerUnavailable."""
        self._check()
        return self.table.busy_pods(queue, pods)

    def activity(self, queue: str, pods: Collection[str] | None = None) -> QueueActivity:
        """in_flight and busy_pods in one pass. Raises BrokerUnavailable."""
        self._check()
        return self.table.activity(queue, pods)

    def workers(self, queue: str | None = None, pods: Collection[str] | None = None) -> list[WorkerState]:
        """Everything known now (no readiness check): for status, debugging and tests."""
        return self.table.workers(queue, pods)

    # the thread

    def _on_heartbeat(self, event: Mapping[str, Any]) -> None:
        self.events_received += 1
        self.table.heartbeat(event)

    def _on_offline(self, event: Mapping[str, Any]) -> None:
        self.events_received += 1
        self.table.offline(event)

    def _on_connected(self) -> None:
        if self._ever_connected:
            self.table.touch_all()
        self._ever_connected = True
        with self._state_lock:
            self._connected_at = self.clock()
        log.info("receiving worker heartbeats from %s", redact(self.url))

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with self._consume() as events:
                    backoff = 0.5
                    for _ in events:
                        pass
            except Exception as error:  # noqa: BLE001 - the thread never dies; it reports and reconnects
                message = _scrub(f"{type(error).__name__}: {error}", self.url)
                if message != self._last_error or self.connected:
                    log.warning("worker heartbeats from %s interrupted: %s", redact(self.url), message)
                self._last_error = message
            with self._state_lock:
                self._connected_at = None
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.reconnect_max)

    @contextmanager
    def _consume(self) -> Iterator[Iterator[Any]]:
        from celery.events.receiver import EventReceiver

        monitor = self

        connection = _connection(self.url, self.timeout, self.transport_options)

        class Receiver(EventReceiver):
            connect_max_retries = 0  # kombu's default retries forever: reconnecting is our loop's job

            def create_connection(self) -> Any:  # ConsumerMixin clones by default: use ours, bounded
                return connection

            def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kwargs: Any) -> None:
                monitor._on_connected()

        try:
            _connect(connection)
            receiver = Receiver(
                connection,
                handlers={
                    "worker-heartbeat": self._on_heartbeat,
                    "worker-online": self._on_heartbeat,
                    "worker-offline": self._on_offline,
                },
                routing_key="worker.#",
                app=_celery_app(),
            )
            self._receiver = receiver
            if self._stop.is_set():
                receiver.should_stop = True
            yield receiver.consume(limit=None, timeout=None, safety_interval=self.poll_interval, wakeup=False)
        finally:
            self._receiver = None
            _release(connection)


# --- arrivals on idle queues -------------------------------------------------------------------
#
# A queue at zero workers should scale the moment its first message lands, not at the next poll.
# Redis announces every list write on `__keyspace@<db>__:<key>` when its `notify-keyspace-events`
# holds K (keyspace) and l (list commands): the managed Redis runs so; an external Redis needs it
# set (otherwise nothing arrives and the poll alone finds the message). Only queues at zero are
# subscribed, so a busy queue costs the operator nothing.

ARRIVAL_EVENTS: Final = frozenset({"lpush", "rpush", "linsert"})
ARRIVALS_CLIENT: Final = "celery-operator-arrivals"  # its name in CLIENT LIST
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def _glob_escape(text: str) -> str:
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def keyspace_pattern(db: int, key_prefix: str, queue: str) -> str:
    """The pattern matching the keyspace channels of a queue's list and its priority lists."""
    return f"__keyspace@{db}__:{_glob_escape(key_prefix + queue)}*"


def arrival_queue(channel: str, db: int, key_prefix: str) -> str | None:
    """The queue a keyspace channel is about (its priority lists included), None for other keys."""
    head = f"__keyspace@{db}__:{key_prefix}"
    if not channel.startswith(head):
        return None
    return channel[len(head):].split(KOMBU_PRIORITY_SEP, 1)[0] or None


class ArrivalWatcher:
    """Calls on_arrival(user) from a background thread when a message lands on a queue that user
    watches, and once when a queue's subscription starts (anything that landed before it would
    go unheard); `watch(user, queues)` replaces a user's set (a TaskQueue's queues at zero workers)."""

    def __init__(self, url: str, on_arrival: Callable[[str], None], *, timeout: float = DEFAULT_TIMEOUT,
                 key_prefix: str = "", reconnect_max: float = 5.0, poll_interval: float = 0.25):
        if _scheme(url) not in REDIS_SCHEMES:
            raise ValueError(f"not a Redis URL: {redact(url)}")
        self.url = url
        self.on_arrival = on_arrival
        self.key_prefix = key_prefix
        self.reconnect_max = reconnect_max
        self.poll_interval = poll_interval
        self._client = redis.Redis.from_url(url, socket_timeout=timeout + poll_interval, client_name=ARRIVALS_CLIENT,
                                            socket_connect_timeout=timeout, health_check_interval=0)
        self.db = int(self._client.connection_pool.connection_kwargs.get("db") or 0)
        self._watched: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"ArrivalWatcher({redact(self.url)!r})"

    def watch(self, user: str, queues: Collection[str]) -> None:
        with self._lock:
            if queues:
                self._watched[user] = frozenset(queues)
            else:
                self._watched.pop(user, None)

    def forget(self, user: str) -> None:
        self.watch(user, ())

    def _patterns(self) -> dict[str, str]:
        """Keyspace pattern -> queue, for every watched queue."""
        with self._lock:
            queues = set().union(*self._watched.values()) if self._watched else set()
        return {keyspace_pattern(self.db, self.key_prefix, queue): queue for queue in queues}

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"arrivals {redact(self.url)}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread = None

    def _run(self) -> None:
        backoff = 0.5
        last_error = None
        while not self._stop.is_set():
            try:
                self._listen()
                backoff = 0.5
            except (redis.RedisError, OSError) as error:
                message = _scrub(f"{type(error).__name__}: {error}", self.url)
                # a broker still starting fails a few times: warn only of what lasts
                lasting = backoff >= self.reconnect_max and message != last_error
                level = logging.WARNING if lasting else logging.DEBUG
                log.log(level, "cannot watch idle queues on %s for their first message (the poll still finds it): "
                        "%s", redact(self.url), message)
                last_error = message if lasting else last_error
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.reconnect_max)
        self._client.close()

    def _listen(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        subscribed: set[str] = set()
        try:
            while not self._stop.is_set():
                wanted = self._patterns()
                added = set(wanted) - subscribed
                if added:
                    pubsub.psubscribe(*added)
                    # a message may have landed between the tick that saw the queue idle and now
                    self._wake_watchers({wanted[pattern] for pattern in added})
                if subscribed - set(wanted):
                    pubsub.punsubscribe(*(subscribed - set(wanted)))
                subscribed = set(wanted)
                if not subscribed:  # redis-py reads nothing before the first subscription
                    self._stop.wait(self.poll_interval)
                    continue
                message = pubsub.get_message(timeout=self.poll_interval)
                if message is not None:
                    self._arrived(message)
        finally:
            pubsub.close()

    def _arrived(self, message: Mapping[str, Any]) -> None:
        data, channel = message.get("data"), message.get("channel")
        if isinstance(data, bytes):
            data = data.decode("ascii", "replace")
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        if data not in ARRIVAL_EVENTS or not isinstance(channel, str):
            return
        queue = arrival_queue(channel, self.db, self.key_prefix)
        if queue:
            self._wake_watchers({queue})

    def _wake_watchers(self, queues: Collection[str]) -> None:
        with self._lock:
            users = [user for user, watched in self._watched.items() if not watched.isdisjoint(queues)]
        for user in users:
            self.on_arrival(user)


# --- the beat's schedule state ------------------------------------------------------------------
#
# The operator's side of the state the beat keeps in Redis (the broker when it is Redis, else the
# `<tq>-beat-state` Redis): the `jobs` hash it writes, the `fired` hash and the heartbeat it reads.
# Key names and entry format: celery_operator/beat/jobs.py. Clients are kept per URL (thread-safe
# connection pools) and dropped when their URL is no longer used for a while.


def is_redis_url(url: str) -> bool:
    return _scheme(url) in REDIS_SCHEMES


@dataclass(frozen=True)
class BeatState:
    """What Redis holds for one TaskQueue's beat (or one job of it)."""

    jobs: dict[str, str]
    fired: dict[str, str]
    heartbeat: dict[str, Any] | None  # the leading beat's last report; None = no beat leads (expired)


# KEYS: jobs, fired. ARGV: (name, expected, new) triples, '' = absent. Each write happens only if
# the entry is still what the caller read, so two writers (a TaskQueue's sync and a PeriodicJob's
# handler) never overwrite each other's newer value; a removal also forgets the job's `fired`.
_BEAT_WRITE_SCRIPT: Final = """
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

_beat_clients: dict[tuple[str, float], tuple[redis.Redis, Any, float]] = {}
_beat_clients_lock = threading.Lock()
_BEAT_CLIENT_IDLE_SECONDS: Final = 600.0


def _beat_client(url: str, timeout: float) -> tuple[redis.Redis, Any]:
    now = time.monotonic()
    with _beat_clients_lock:
        for key, (client, _script, used) in list(_beat_clients.items()):
            if now - used > _BEAT_CLIENT_IDLE_SECONDS:
                del _beat_clients[key]
                client.close()
        entry = _beat_clients.get((url, timeout))
        if entry is None:
            client = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=0,
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)), retry_on_timeout=False,
                max_connections=8,
            )
            entry = (client, client.register_script(_BEAT_WRITE_SCRIPT), now)
        _beat_clients[(url, timeout)] = (entry[0], entry[1], now)
        return entry[0], entry[1]


def _beat_keys(prefix: str) -> tuple[str, str, str]:
    return prefix + naming.BEAT_JOBS_KEY, prefix + naming.BEAT_FIRED_KEY, prefix + naming.BEAT_HEARTBEAT_KEY


def _decode(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _heartbeat(value: bytes | str | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        decoded = json.loads(value)
    except (TypeError, ValueError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


def read_beat_state(url: str, prefix: str, *, name: str | None = None,
                    timeout: float = DEFAULT_TIMEOUT) -> BeatState:
    """One pipelined read of `jobs`, `fired` and the heartbeat (of one job only, with `name`).
    Raises BrokerUnavailable."""
    jobs_key, fired_key, heartbeat_key = _beat_keys(prefix)
    try:
        client, _ = _beat_client(url, timeout)
        pipe = client.pipeline(transaction=False)
        if name is None:
            pipe.hgetall(jobs_key)
            pipe.hgetall(fired_key)
        else:
            pipe.hget(jobs_key, name)
            pipe.hget(fired_key, name)
        pipe.get(heartbeat_key)
        jobs, fired, heartbeat = pipe.execute()
    except (redis.RedisError, OSError) as error:
        raise BrokerUnavailable(url, "cannot read the beat's schedule state", error) from None
    if name is not None:
        jobs = {} if jobs is None else {name: jobs}
        fired = {} if fired is None else {name: fired}
    return BeatState(jobs={_decode(k): _decode(v) for k, v in jobs.items()},
                     fired={_decode(k): _decode(v) for k, v in fired.items()},
                     heartbeat=_heartbeat(heartbeat))


def write_beat_jobs(url: str, prefix: str, upserts: Mapping[str, tuple[str | None, str]],
                    removals: Mapping[str, str | None], *, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """Compare-and-set entries of `jobs`: upserts name -> (the value read, None = absent; the new value),
    removals name -> the value read. Returns the names skipped because somebody changed them since.
    Raises BrokerUnavailable."""
    args: list[str] = []
    for name, (expected, new) in upserts.items():
        args += [name, expected or "", new]
    for name, expected in removals.items():
        args += [name, expected or "", ""]
    if not args:
        return []
    jobs_key, fired_key, _ = _beat_keys(prefix)
    try:
        _, script = _beat_client(url, timeout)
        skipped = script(keys=[jobs_key, fired_key], args=args)
    except (redis.RedisError, OSError) as error:
        raise BrokerUnavailable(url, "cannot write the beat's schedule", error) from None
    return [_decode(name) for name in skipped or []]


def remove_beat_job(url: str, prefix: str, name: str, *, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Forget one job at once (its PeriodicJob was deleted, moved or made invalid); False when it
    was not there. Raises BrokerUnavailable."""
    jobs_key, fired_key, _ = _beat_keys(prefix)
    try:
        client, _ = _beat_client(url, timeout)
        pipe = client.pipeline(transaction=True)
        pipe.hdel(jobs_key, name)
        pipe.hdel(fired_key, name)
        removed, _ = pipe.execute()
    except (redis.RedisError, OSError) as error:
        raise BrokerUnavailable(url, "cannot remove a job from the beat's schedule", error) from None
    return bool(removed)


def delete_beat_state(url: str, prefix: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Remove every key of one TaskQueue's beat state (the TaskQueue is being deleted): a beat still
    running until its pod is collected finds no job to send. Raises BrokerUnavailable."""
    keys = [prefix + key for key in (naming.BEAT_JOBS_KEY, naming.BEAT_FIRED_KEY, naming.BEAT_LEADER_KEY,
                                     naming.BEAT_HEARTBEAT_KEY)]
    try:
        client, _ = _beat_client(url, timeout)
        client.delete(*keys)
    except (redis.RedisError, OSError) as error:
        raise BrokerUnavailable(url, "cannot remove the beat's schedule state", error) from None
