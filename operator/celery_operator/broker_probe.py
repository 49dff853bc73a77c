"""Is the broker reachable from the operator? One short connection per check, with a timeout.
(Kept apart from broker.py's depth readers; it moves there once both settle.)"""

from __future__ import annotations

import kombu
import redis


def probe(url: str, timeout: float) -> str | None:
    """None when the broker answers, else a message that names no credentials."""
    try:
        if url.startswith(("redis://", "rediss://")):
            client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
            try:
                client.ping()
            finally:
                client.close()
        else:
            with kombu.Connection(url, connect_timeout=timeout) as connection:
                connection.ensure_connection(max_retries=1, timeout=timeout)
    except Exception as error:  # every failure means the same to the caller: not reachable now
        return f"broker not reachable: {type(error).__name__}: {error}"
    return None
