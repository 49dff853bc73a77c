"""What every handler shares for the life of the operator process: the settings, the I/O ports
(Kubernetes, the brokers, the beats' state), per-object locks, the scaler daemons' wake-ups, what
each status writer last wrote and the scaler's memory of each queue. Built by the composition root
(lifecycle.py); the controller tests build one over fakes."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .ports import BeatStatePort, BrokerPort, KubePort
from .scaling_policy import History
from .settings import Settings
from .status import StatusPart
from .workerhealth import PodMemory

FORGOTTEN_FOR_SECONDS = 3600  # how long a deleted object's uid is remembered: far longer than a pass runs


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


class LastWrites:
    """The last part each writer wrote of each object's status, and what that write replaced.

    Two passes over one object may run one after the other with bodies read before either wrote
    (a timer beside a change handler): the second body still shows what the first write replaced.
    Compared with that, the second pass would write the same change again and post its Event twice;
    compared with what the first wrote, it writes nothing."""

    def __init__(self) -> None:
        self._writes: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def live(self, uid: str, field_manager: str, part: StatusPart, status: Mapping[str, Any]) -> Mapping[str, Any]:
        """`status`, unless it is exactly what this writer's last write replaced: then what it wrote."""
        with self._lock:
            last = self._writes.get((uid, field_manager))
        if last is not None and not part.changed(status, last[0]):
            return last[1]
        return status

    def record(self, uid: str, field_manager: str, replaced: Mapping[str, Any], written: Mapping[str, Any]) -> None:
        with self._lock:
            self._writes[(uid, field_manager)] = (dict(replaced), dict(written))

    def forget(self, uid: str) -> None:
        with self._lock:
            for key in [key for key in self._writes if key[0] == uid]:
                del self._writes[key]


@dataclass
class QueueMemory:
    """What the scaler remembers of one queue between ticks."""

    history: History = field(default_factory=History)
    last_scale_time: str | None = None
    pods: Mapping[str, PodMemory] = field(default_factory=dict)  # the health checks' memory of each pod
    last_restart: Mapping[str, Any] | None = None  # status.queues[].lastRestart


@dataclass
class Runtime:
    settings: Settings
    kube: KubePort
    brokers: BrokerPort
    beat_state: BeatStatePort
    wakeups: Wakeups = field(default_factory=Wakeups)
    status_writes: LastWrites = field(default_factory=LastWrites)  # what each writer last wrote of each status
    # broker reads block for up to their timeout: a pool of their own, so slow brokers never
    # starve kopf's handler threads or one another
    scaler_pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(32, "scaler"))
    _memory: dict[str, dict[str, QueueMemory]] = field(default_factory=dict)
    _brokers_read: set[str] = field(default_factory=set)  # TaskQueues whose broker answered the scaler once
    _locks: dict[str, threading.Lock] = field(default_factory=dict)
    _locks_guard: threading.Lock = field(default_factory=threading.Lock)
    _forgotten: dict[str, float] = field(default_factory=dict)  # deleted objects' uids, when forgotten

    def lock_for(self, uid: str) -> threading.Lock:
        """Timers and change handlers of one object may run at once in kopf's thread pool."""
        with self._locks_guard:
            return self._locks.setdefault(uid, threading.Lock())

    @contextlib.contextmanager
    def exclusively(self, uid: str) -> Iterator[bool]:
        """Hold the object's lock; yields whether it is still there. A timer's pass that began before
        the object's deletion ends after it: it must not write again what `forget`'s caller removed."""
        with self.lock_for(uid):
            with self._locks_guard:
                present = uid not in self._forgotten
            yield present

    def deleted(self, uid: str) -> bool:
        """Whether `forget` was called for the object (in the last FORGOTTEN_FOR_SECONDS)."""
        with self._locks_guard:
            return uid in self._forgotten

    def queue_memory(self, uid: str, queue: str) -> QueueMemory:
        with self._locks_guard:
            return self._memory.setdefault(uid, {}).setdefault(queue, QueueMemory())

    def mark_broker_read(self, uid: str) -> None:
        self._brokers_read.add(uid)

    def broker_ever_read(self, uid: str) -> bool:
        return uid in self._brokers_read

    def forget(self, uid: str) -> None:
        """The object was deleted: once a pass under way has ended, no later pass of it writes anything."""
        with self.lock_for(uid):
            now = time.monotonic()
            with self._locks_guard:
                self._locks.pop(uid, None)
                self._memory.pop(uid, None)
                self._brokers_read.discard(uid)
                for old in [key for key, when in self._forgotten.items() if now - when > FORGOTTEN_FOR_SECONDS]:
                    del self._forgotten[old]
                self._forgotten[uid] = now
        self.status_writes.forget(uid)
        self.brokers.release(uid)

    def close(self) -> None:
        self.brokers.close()
        self.beat_state.close()
        self.scaler_pool.shutdown(wait=False, cancel_futures=True)
        self.kube.close()
