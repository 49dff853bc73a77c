"""What every handler shares for the life of the operator process: the API client, settings,
per-object locks, one broker connection set per broker URL, and the scaler's memory."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import broker
from .kube import Kube
from .scaling import History
from .settings import OperatorSettings

BrokerProbe = Callable[[str, float], "str | None"]  # (url, timeout) -> None when reachable, else why not


@dataclass
class BrokerHandles:
    """A depth reader and a heartbeat monitor for one broker, shared by the TaskQueues using it."""

    reader: broker.DepthReader
    monitor: broker.HeartbeatMonitor
    arrivals: broker.ArrivalWatcher | None = None  # Redis brokers only
    users: set[str] = field(default_factory=set)

    def close(self) -> None:
        self.monitor.stop(wait=False)
        if self.arrivals is not None:
            self.arrivals.stop()
        self.reader.close()


class Wakeups:
    """One asyncio.Event per TaskQueue for its scaler daemon to sleep on; `wake` may be called from any
    thread (the broker's arrival watcher), and makes the daemon tick at once."""

    def __init__(self) -> None:
        self._events: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        self._lock = threading.Lock()

    def register(self, uid: str) -> asyncio.Event:
        """Called by the daemon, on its event loop."""
        event = asyncio.Event()
        with self._lock:
            self._events[uid] = (asyncio.get_running_loop(), event)
        return event

    def wake(self, uid: str) -> None:
        with self._lock:
            entry = self._events.get(uid)
        if entry is not None:
            loop, event = entry
            loop.call_soon_threadsafe(event.set)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._events.pop(uid, None)


class BrokerRegistry:
    """Opens a broker's handles on first use and closes them when its last TaskQueue lets go."""

    def __init__(self, timeout: float, on_arrival: Callable[[str], None]):
        self._timeout = timeout
        self._on_arrival = on_arrival
        self._by_url: dict[str, BrokerHandles] = {}
        self._url_of_user: dict[str, str] = {}
        self._lock = threading.Lock()

    def acquire(self, user: str, url: str) -> BrokerHandles:
        with self._lock:
            previous = self._url_of_user.get(user)
            if previous is not None and previous != url:
                self._release_locked(user)
            handles = self._by_url.get(url)
            if handles is None:
                monitor = broker.HeartbeatMonitor(url, timeout=self._timeout)
                arrivals = broker.ArrivalWatcher(url, self._on_arrival, timeout=self._timeout) \
                    if broker.is_redis_url(url) else None
                handles = BrokerHandles(reader=broker.depth_reader_for(url, timeout=self._timeout), monitor=monitor,
                                        arrivals=arrivals)
                monitor.start()
                if arrivals is not None:
                    arrivals.start()
                self._by_url[url] = handles
            handles.users.add(user)
            self._url_of_user[user] = url
            return handles

    def release(self, user: str) -> None:
        with self._lock:
            self._release_locked(user)

    def _release_locked(self, user: str) -> None:
        url = self._url_of_user.pop(user, None)
        handles = self._by_url.get(url) if url else None
        if handles is None:
            return
        handles.users.discard(user)
        if handles.arrivals is not None:
            handles.arrivals.forget(user)
        if not handles.users:
            del self._by_url[url]
            handles.close()

    def close(self) -> None:
        with self._lock:
            for handles in self._by_url.values():
                handles.close()
            self._by_url.clear()
            self._url_of_user.clear()


@dataclass
class QueueMemory:
    """What the scaler remembers of one queue between ticks."""

    history: History = field(default_factory=History)
    last_scale_time: str | None = None


@dataclass
class Runtime:
    kube: Kube
    settings: OperatorSettings
    probe_broker: BrokerProbe
    brokers: BrokerRegistry
    wakeups: Wakeups
    # broker reads block for up to their timeout: a pool of their own, so slow brokers never
    # starve kopf's handler threads or one another
    scaler_pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(32, "scaler"))
    memory: dict[str, dict[str, QueueMemory]] = field(default_factory=dict)
    brokers_read: set[str] = field(default_factory=set)  # TaskQueues whose broker answered the scaler once
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def create(cls, settings: OperatorSettings) -> "Runtime":
        wakeups = Wakeups()
        return cls(kube=Kube.from_environment(settings.api_timeout_seconds), settings=settings,
                   probe_broker=broker.probe, brokers=BrokerRegistry(settings.broker_timeout_seconds, wakeups.wake),
                   wakeups=wakeups)

    def lock_for(self, uid: str) -> threading.Lock:
        """Timers and change handlers of one object may run at once in kopf's thread pool."""
        with self._locks_guard:
            return self._locks.setdefault(uid, threading.Lock())

    def queue_memory(self, uid: str, queue: str) -> QueueMemory:
        with self._locks_guard:
            return self.memory.setdefault(uid, {}).setdefault(queue, QueueMemory())

    def mark_broker_read(self, uid: str) -> None:
        self.brokers_read.add(uid)

    def broker_ever_read(self, uid: str) -> bool:
        return uid in self.brokers_read

    def forget(self, uid: str) -> None:
        with self._locks_guard:
            self._locks.pop(uid, None)
            self.memory.pop(uid, None)
            self.brokers_read.discard(uid)
        self.brokers.release(uid)

    def close(self) -> None:
        self.brokers.close()
        self.scaler_pool.shutdown(wait=False, cancel_futures=True)
        self.kube.close()
