"""Arrivals: wake the scaler the moment a queue's backlog grows past what its workers can take.

Redis announces every list write on `__keyspace@<db>__:<key>` when its `notify-keyspace-events`
holds K (keyspace) and l (list commands): the managed Redis runs so; an external Redis needs it
set (otherwise nothing arrives and the poll alone finds the backlog). A message sent is a push on
the queue's list, a message a worker takes a pop: the watcher counts pushes less pops per queue
since the scaler's last tick, and wakes its TaskQueue once that growth reaches what the tick said
calls for more workers (scaling_policy.growth_to_scale_up: 1 at zero replicas). Queues at
maxReplicas are not subscribed; every other autoscaled queue costs the operator two notifications
per message, read on this thread.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Collection, Mapping
from typing import Any, Final

import redis

from .connections import DEFAULT_TIMEOUT, redis_client
from .depth import KOMBU_PRIORITY_SEP
from .urls import is_redis_url, redact, scrub

log = logging.getLogger(__name__)

ARRIVAL_EVENTS: Final = frozenset({"lpush", "rpush", "linsert"})
DEPARTURE_EVENTS: Final = frozenset({"lpop", "rpop"})  # BLPOP/BRPOP are announced as these
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
    """Calls on_arrival(user) from a background thread when a queue that user watches has grown by
    its threshold since the user last called `watch`, and once when a queue's subscription starts
    (anything that landed before it would go unheard). `watch(user, thresholds)` replaces a user's
    queues and thresholds and starts counting afresh: the scaler calls it after every tick."""

    def __init__(self, url: str, on_arrival: Callable[[str], None], *, timeout: float = DEFAULT_TIMEOUT,
                 key_prefix: str = "", reconnect_max: float = 5.0, poll_interval: float = 0.25):
        if not is_redis_url(url):
            raise ValueError(f"not a Redis URL: {redact(url)}")
        self.url = url
        self.on_arrival = on_arrival
        self.key_prefix = key_prefix
        self.reconnect_max = reconnect_max
        self.poll_interval = poll_interval
        # a dropped subscription must surface: the watcher then resubscribes and wakes its users, as
        # messages may have landed while it was gone
        self._client = redis_client(url, timeout, read_timeout=timeout + poll_interval, client_name=ARRIVALS_CLIENT,
                                    retry_dropped=False)
        self.db = int(self._client.connection_pool.connection_kwargs.get("db") or 0)
        self._watched: dict[str, _Watch] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"ArrivalWatcher({redact(self.url)!r})"

    def watch(self, user: str, thresholds: Mapping[str, int]) -> None:
        """Wake `user` once any of these queues grows by its threshold (>= 1) from now on."""
        with self._lock:
            if thresholds:
                self._watched[user] = _Watch(dict(thresholds))
            else:
                self._watched.pop(user, None)

    def forget(self, user: str) -> None:
        self.watch(user, {})

    def _patterns(self) -> dict[str, str]:
        """Keyspace pattern -> queue, for every watched queue."""
        with self._lock:
            queues = {queue for watch in self._watched.values() for queue in watch.thresholds}
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
                message = scrub(f"{type(error).__name__}: {error}", self.url)
                # a broker still starting fails a few times: warn only of what lasts
                lasting = backoff >= self.reconnect_max and message != last_error
                level = logging.WARNING if lasting else logging.DEBUG
                log.log(level, "cannot watch queues on %s for arrivals (the poll still finds them): "
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
        step = 1 if data in ARRIVAL_EVENTS else -1 if data in DEPARTURE_EVENTS else 0
        queue = arrival_queue(channel, self.db, self.key_prefix) if step and isinstance(channel, str) else None
        if queue is None:
            return
        with self._lock:
            users = [user for user, watch in self._watched.items() if watch.grew(queue, step)]
        for user in users:
            self.on_arrival(user)

    def _wake_watchers(self, queues: Collection[str]) -> None:
        with self._lock:
            users = [user for user, watch in self._watched.items() if not watch.thresholds.keys().isdisjoint(queues)]
        for user in users:
            self.on_arrival(user)


class _Watch:
    """One user's queues: the growth that wakes it, the growth counted since it last called `watch`,
    and whether it has been woken since (once is enough: its tick re-arms it)."""

    def __init__(self, thresholds: dict[str, int]):
        self.thresholds = thresholds
        self.growth = dict.fromkeys(thresholds, 0)
        self.woken = False

    def grew(self, queue: str, step: int) -> bool:
        """Count one push (+1) or pop (-1) on `queue`; True the first time a threshold is reached."""
        if queue not in self.thresholds:
            return False
        self.growth[queue] += step
        if self.woken or self.growth[queue] < self.thresholds[queue]:
            return False
        self.woken = True
        return True
