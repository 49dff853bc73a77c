"""Queue depth: per queue, the messages waiting in the broker and those a worker reserved.

What is measured, per queue Q:

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
  RabbitMQ counts ready messages only (5 tasks, 2 running, 2 prefetched -> message_count 1); a
  passive declare of a missing queue is a channel error 404 that closes the channel (the reader
  opens a new one).

Cost (bench/bench_scaler_tick.py, 400 queues on one Redis): one round trip per read either way.
The default is the server-side script `depth.lua` (one EVALSHA returning pending and reserved per
queue): about 1.5 ms of operator CPU per read, 3-4 ms of Redis time (12 ms with 2000 reserved
messages to attribute). A `transaction=False` pipeline of the same LLENs plus HVALS, counted here
with the same routing rules, costs the operator about 30 ms of CPU (45 ms with 2000 reserved, whose
bodies it must download) and is only the fallback when a server refuses scripts (ACL, some managed
Redis); method="auto" switches to it by itself. RabbitMQ needs one round trip per queue (AMQP has
no batched declare); a TaskQueue has <= 50 queues.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, Literal, Protocol

import kombu
import redis
from amqp.exceptions import NotFound as AmqpNotFound

from .connections import DEFAULT_TIMEOUT, connect_once, kombu_connection, redis_client, release
from .urls import BrokerUnavailable, is_amqp_url, is_redis_url, redact, scheme, scrub

log = logging.getLogger(__name__)

# kombu's Redis transport names (kombu/transport/redis.py, Channel attributes).
KOMBU_PRIORITY_SEP: Final = "\x06\x16"
KOMBU_UNACKED_KEY: Final = "unacked"
KOMBU_BINDING_PREFIX: Final = "_kombu.binding."
MAX_PRIORITY_LEVEL: Final = 9  # Celery priorities are 0..9; lists exist for the steps 1..9 at most
DEPTH_SCRIPT: Final = resources.files(__package__).joinpath("depth.lua").read_text(encoding="utf-8")

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
    if is_redis_url(url):
        return RedisDepthReader(url, timeout=timeout, **options)
    if is_amqp_url(url):
        return AmqpDepthReader(url, timeout=timeout, **options)
    raise ValueError(f"unsupported broker URL scheme {scheme(url)!r} in {redact(url)}")


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
        if not is_redis_url(url):
            raise ValueError(f"not a Redis URL: {redact(url)}")
        self.url = url
        self.timeout = timeout
        self.method: RedisMethod = method
        self.counts_reserved = count_reserved
        self.priority_levels = priority_levels
        self.key_prefix = key_prefix
        self._lock = threading.Lock()
        self._client = redis_client(url, timeout, max_connections=2)
        self._script = self._client.register_script(DEPTH_SCRIPT)
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
                        redact(self.url), scrub(str(error), self.url),
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
        if not is_amqp_url(url):
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
            self._connection = kombu_connection(self.url, self.timeout)
        if self._channel is None:
            connect_once(self._connection)
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
                release(connection)

