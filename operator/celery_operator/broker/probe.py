"""Is the broker reachable from the operator (the TaskQueue's BrokerReady condition), and does a
Redis broker still accept writes (BrokerAcceptingWrites)?"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from .connections import connected, redis_client
from .urls import is_redis_url, scrub


FULL_MARGIN_PERCENT: Final = 1
# Redis grows a client's request buffer greedily, so a message of some tens of KiB is refused while
# several times its size is still free: a 16 KiB Celery message with about 90 KiB left.
FULL_HEADROOM_BYTES: Final = 256 * 1024


@dataclass(frozen=True)
class RedisMemory:
    """What `INFO memory` says about maxmemory. `used` counts as Redis does when it decides to refuse
    a write: used_memory without the buffers maxmemory leaves out (replica output, AOF)."""

    used: int
    max: int  # 0 = no maxmemory
    policy: str

    @property
    def limited(self) -> bool:
        return self.max > 0

    @property
    def full(self) -> bool:
        """Too close to maxmemory to take another message: within FULL_MARGIN_PERCENT of it, or within
        FULL_HEADROOM_BYTES for a small maxmemory. Redis refuses a write when the memory in use at that
        moment, the write's own request buffer counted, is over maxmemory; with noeviction it answers
        with an OOM error, and a broker that has just refused one reads well under maxmemory after."""
        headroom = max(self.max * FULL_MARGIN_PERCENT // 100, FULL_HEADROOM_BYTES)
        return self.limited and self.used >= self.max - headroom

    @classmethod
    def of_info(cls, info: dict[str, Any]) -> RedisMemory:
        used = int(info.get("used_memory", 0)) - int(info.get("mem_not_counted_for_evict", 0))
        return cls(used=used, max=int(info.get("maxmemory", 0)), policy=str(info.get("maxmemory_policy", "")))


@dataclass(frozen=True)
class ProbeResult:
    problem: str | None  # None when the broker answers, else why not (no password in it)
    memory: RedisMemory | None = None  # Redis only, when INFO answered (an ACL may forbid it)


def probe(url: str, timeout: float) -> ProbeResult:
    """One short connection per check: Redis answers PING (then INFO memory), an AMQP broker
    completes its handshake."""
    memory = None
    try:
        if is_redis_url(url):
            client = redis_client(url, timeout, max_connections=1)
            try:
                client.ping()
                memory = _memory(client)
            finally:
                client.close()
        else:
            with connected(url, timeout):
                pass
    except Exception as error:  # noqa: BLE001 - every failure means the same to the caller: not reachable now
        return ProbeResult(scrub(f"broker not reachable: {type(error).__name__}: {error}", url))
    return ProbeResult(None, memory)


def _memory(client: Any) -> RedisMemory | None:
    try:
        return RedisMemory.of_info(client.info("memory"))
    except Exception:  # noqa: BLE001 - the broker answered PING: reachable, its memory just unknown
        return None
