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
class RedisInstance:
    """Which run of redis-server answered: its run_id changes with every start of the server."""

    run_id: str
    uptime_seconds: int
    append_only: bool  # it keeps an append-only file: what it held before a restart, it holds after

    @classmethod
    def of_info(cls, info: dict[str, Any]) -> RedisInstance | None:
        run_id = info.get("run_id")
        if not run_id:
            return None
        return cls(run_id=str(run_id), uptime_seconds=int(info.get("uptime_in_seconds", 0)),
                   append_only=bool(int(info.get("aof_enabled", 0))))


@dataclass(frozen=True)
class ProbeResult:
    problem: str | None  # None when the broker answers, else why not (no password in it)
    memory: RedisMemory | None = None  # Redis only, when INFO answered (an ACL may forbid it)
    instance: RedisInstance | None = None  # likewise


def probe(url: str, timeout: float) -> ProbeResult:
    """One short connection per check: Redis answers PING (then INFO: its memory, which run of the
    server it is), an AMQP broker completes its handshake."""
    memory = instance = None
    try:
        if is_redis_url(url):
            client = redis_client(url, timeout, max_connections=1)
            try:
                client.ping()
                memory, instance = _info(client)
            finally:
                client.close()
        else:
            with connected(url, timeout):
                pass
    except Exception as error:  # noqa: BLE001 - every failure means the same to the caller: not reachable now
        return ProbeResult(scrub(f"broker not reachable: {type(error).__name__}: {error}", url))
    return ProbeResult(None, memory, instance)


def _info(client: Any) -> tuple[RedisMemory | None, RedisInstance | None]:
    try:
        info = client.info()  # the default sections: server, memory and persistence among them
    except Exception:  # noqa: BLE001 - the broker answered PING: reachable, the rest just unknown
        return None, None
    return RedisMemory.of_info(info), RedisInstance.of_info(info)
