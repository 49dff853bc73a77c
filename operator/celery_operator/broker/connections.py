"""The one way the operator makes and owns broker connections.

Every connection is made here, bounded by a timeout and without kombu's or redis-py's silent
retries, and has exactly one owner:

- long-lived ones belong to an object with `close()` (a depth reader, a heartbeat monitor, an
  arrival watcher, a beat-state store), which its owner closes: the broker registry when the last
  TaskQueue of a broker lets go, the operator's Runtime at shutdown;
- short ones (a reachability probe, an inspect before a scale-down) live in a `with connected(...)`
  block and are released at its end.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import kombu
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .urls import is_redis_url

DEFAULT_TIMEOUT = 2.0


def redis_client(url: str, timeout: float, *, read_timeout: float | None = None, max_connections: int | None = None,
                 client_name: str | None = None, retry_dropped: bool = True) -> redis.Redis:
    """A Redis client whose calls fail within `timeout` (`read_timeout` for blocking reads).

    A dropped connection (the server restarted) is retried once at once, unless `retry_dropped` is
    False; a timeout never is.
    """
    return redis.Redis.from_url(
        url, socket_timeout=read_timeout or timeout, socket_connect_timeout=timeout, health_check_interval=0,
        retry=Retry(NoBackoff(), 1 if retry_dropped else 0, supported_errors=(redis.ConnectionError,)),
        retry_on_timeout=False, max_connections=max_connections, client_name=client_name,
    )


def transport_options(url: str, timeout: float, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """kombu transport options bounding every socket operation and every connect retry, plus the
    app's own options where they change names on the broker (Redis `global_keyprefix`,
    `fanout_prefix`, `fanout_patterns`): the operator must listen where the workers talk."""
    options: dict[str, Any] = {"max_retries": 0}  # kombu: one attempt, no 2 s sleep before a retry
    if is_redis_url(url):
        # kombu's BRPOP (pidbox replies) blocks for 1 s: a socket timeout must be longer than that.
        options.update(socket_timeout=max(timeout, 1.5), socket_connect_timeout=timeout, health_check_interval=10)
    else:
        options.update(read_timeout=timeout, write_timeout=timeout)
    options.update(extra or {})
    return options


def kombu_connection(url: str, timeout: float, extra_options: Mapping[str, Any] | None = None) -> kombu.Connection:
    """A kombu connection, not yet connected (see `connect_once`)."""
    return kombu.Connection(url, connect_timeout=timeout, transport_options=transport_options(url, timeout,
                                                                                              extra_options))


def connect_once(connection: kombu.Connection) -> None:
    """Connect, no retry (kombu's connect() retries once after sleeping 2 s)."""
    connection.ensure_connection(max_retries=0)


def release(connection: kombu.Connection) -> None:
    try:
        connection.release()
    except Exception:  # noqa: BLE001 - closing a dead connection may fail; it is gone anyway
        pass


@contextmanager
def connected(url: str, timeout: float, extra_options: Mapping[str, Any] | None = None) -> Iterator[kombu.Connection]:
    """A kombu connection for one short exchange, connected once and released at the end."""
    connection = kombu_connection(url, timeout, extra_options)
    try:
        connect_once(connection)
        yield connection
    finally:
        release(connection)
