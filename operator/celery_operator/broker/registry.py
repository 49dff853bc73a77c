"""The operator's broker port: one depth reader, heartbeat monitor and (Redis) arrival watcher per
broker URL, opened on first use, shared by the TaskQueues using that broker, and closed when the
last of them lets go."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from .arrivals import ArrivalWatcher
from .control import busy_workers
from .depth import DepthReader, QueueDepth, depth_reader_for
from .heartbeats import HeartbeatMonitor, QueueActivity, WorkerState
from .probe import ProbeResult, probe
from .urls import is_redis_url, redact


@dataclass
class BrokerSession:
    """What the scaler reads from one broker, for every TaskQueue that uses it."""

    url: str
    reader: DepthReader
    monitor: HeartbeatMonitor
    arrivals: ArrivalWatcher | None = None  # Redis brokers only
    users: set[str] = field(default_factory=set)

    def __repr__(self) -> str:
        return f"BrokerSession({redact(self.url)!r}, users={len(self.users)})"

    def read_depths(self, queues: Sequence[str]) -> dict[str, QueueDepth]:
        """Raises BrokerUnavailable."""
        return self.reader.read(queues)

    def activity(self, queue: str, pods: Collection[str]) -> QueueActivity:
        """Raises BrokerUnavailable."""
        return self.monitor.activity(queue, pods=pods)

    def workers(self, queue: str, pods: Collection[str]) -> list[WorkerState]:
        """The queue's workers among `pods`, by their latest heartbeat. Raises BrokerUnavailable."""
        return self.monitor.current_workers(queue, pods=pods)

    def busy_workers(self, worker_names: Collection[str], timeout: float) -> set[str]:
        """Raises BrokerUnavailable."""
        return busy_workers(self.url, worker_names, timeout=timeout)

    def watch_growth(self, user: str, thresholds: Mapping[str, int]) -> None:
        """Wake `user` when one of these queues grows by its threshold from now on (a no-op where the
        broker cannot tell)."""
        if self.arrivals is not None:
            self.arrivals.watch(user, thresholds)

    def start(self) -> None:
        self.monitor.start()
        if self.arrivals is not None:
            self.arrivals.start()

    def close(self) -> None:
        self.monitor.stop(wait=False)
        if self.arrivals is not None:
            self.arrivals.stop()
        self.reader.close()


class BrokerRegistry:
    """Opens a broker's session on first use and closes it when its last TaskQueue lets go."""

    def __init__(self, timeout: float, on_arrival: Callable[[str], None]):
        self._timeout = timeout
        self._on_arrival = on_arrival
        self._by_url: dict[str, BrokerSession] = {}
        self._url_of_user: dict[str, str] = {}
        self._lock = threading.Lock()

    def probe(self, url: str) -> ProbeResult:
        """Whether the broker answers (else why not), and a Redis broker's memory."""
        return probe(url, self._timeout)

    def count_messages(self, url: str, queues: Sequence[str]) -> int:
        """Messages `queues` hold in the broker, waiting or reserved, read once over a connection of
        its own. Raises BrokerUnavailable."""
        reader = depth_reader_for(url, timeout=self._timeout)
        try:
            return sum(depth.pending + depth.reserved for depth in reader.read(queues).values())
        finally:
            reader.close()

    def session(self, user: str, url: str) -> BrokerSession:
        with self._lock:
            previous = self._url_of_user.get(user)
            if previous is not None and previous != url:
                self._release_locked(user)
            session = self._by_url.get(url)
            if session is None:
                arrivals = ArrivalWatcher(url, self._on_arrival, timeout=self._timeout) if is_redis_url(url) else None
                monitor = HeartbeatMonitor(url, timeout=self._timeout,
                                           on_worker_online=functools.partial(self._worker_online, url))
                session = BrokerSession(url=url, reader=depth_reader_for(url, timeout=self._timeout),
                                        monitor=monitor, arrivals=arrivals)
                session.start()
                self._by_url[url] = session
            session.users.add(user)
            self._url_of_user[user] = url
            return session

    def _worker_online(self, url: str, hostname: str) -> None:
        """A worker came online: its TaskQueue's scaler ticks now, so the pod is Ready without waiting
        a poll interval (every user of the broker is woken: the hostname does not name the TaskQueue)."""
        with self._lock:
            session = self._by_url.get(url)
            users = list(session.users) if session is not None else []
        for user in users:
            self._on_arrival(user)

    def release(self, user: str) -> None:
        with self._lock:
            self._release_locked(user)

    def _release_locked(self, user: str) -> None:
        url = self._url_of_user.pop(user, None)
        session = self._by_url.get(url) if url else None
        if session is None:
            return
        session.users.discard(user)
        if session.arrivals is not None:
            session.arrivals.forget(user)
        if not session.users:
            del self._by_url[url]
            session.close()

    def close(self) -> None:
        with self._lock:
            for session in self._by_url.values():
                session.close()
            self._by_url.clear()
            self._url_of_user.clear()
