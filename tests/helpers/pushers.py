"""A producer that never stops: RPUSH a new number every few milliseconds through a broker's address,
remembering which pushes the broker acknowledged and when it refused them, so that a test or bench
can hold a restart to "every acknowledged write is still there" and time the refusals."""

from __future__ import annotations

import threading
import time

import redis


class Pusher:
    def __init__(self, url: str, key: str, every: float = 0.02):
        self.key = key
        self._client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._every = every
        self._accepted: list[int] = []
        self._lock = threading.Lock()
        self.outages: list[tuple[float, float]] = []  # (first refused, next accepted), monotonic
        self._refused_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        number = 0
        while not self._stop.wait(self._every):
            try:
                self._client.rpush(self.key, number)
            except redis.RedisError:
                if self._refused_since is None:
                    self._refused_since = time.monotonic()
                number += 1  # never pushed twice: a timed-out push may still have landed
                continue
            with self._lock:
                self._accepted.append(number)
                if self._refused_since is not None:
                    self.outages.append((self._refused_since, time.monotonic()))
                    self._refused_since = None
            number += 1

    def accepted(self) -> list[int]:
        """The numbers the broker acknowledged so far."""
        with self._lock:
            return list(self._accepted)

    def held(self, url: str) -> tuple[list[int], list[int]]:
        """What the broker acknowledged, then what its list holds now (read after, so that every
        acknowledged number must be there)."""
        acknowledged = self.accepted()
        with redis.Redis.from_url(url, socket_timeout=5) as client:
            return acknowledged, [int(value) for value in client.lrange(self.key, 0, -1)]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._client.close()


def missing(acknowledged: list[int], held: list[int]) -> list[int]:
    present = set(held)
    return [number for number in acknowledged if number not in present]
