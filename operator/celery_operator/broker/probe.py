"""Is the broker reachable from the operator? (the TaskQueue's BrokerReady condition)"""

from __future__ import annotations

from .connections import connected, redis_client
from .urls import is_redis_url, scrub


def probe(url: str, timeout: float) -> str | None:
    """None when the broker answers, else why not (no password in it).

    One short connection per check: Redis answers PING, an AMQP broker completes its handshake.
    """
    try:
        if is_redis_url(url):
            client = redis_client(url, timeout, max_connections=1)
            try:
                client.ping()
            finally:
                client.close()
        else:
            with connected(url, timeout):
                pass
    except Exception as error:  # noqa: BLE001 - every failure means the same to the caller: not reachable now
        return scrub(f"broker not reachable: {type(error).__name__}: {error}", url)
    return None
