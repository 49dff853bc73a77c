"""Tasks in flight and busy pods, from the workers' own heartbeats.

No broker structure holds a running task (Celery acks at start). Workers send `worker-heartbeat`
events every 2 s on the `celeryev` exchange, also without `-E`, and the operator names workers
`<queue>@<pod>`: `HeartbeatMonitor` listens in a thread and `HeartbeatTable` keeps the latest per
worker.

Facts verified on this machine (celery 5.7.0, kombu 5.7.0, redis 7.0, RabbitMQ 3.10.8; the
integration tests in tests/integration/test_broker.py check all but the two marked "by hand"):

- `active` in a heartbeat is `len(worker.state.active_requests)`: tasks a pool process has
  accepted and not finished. Reserved (prefetched) tasks are not in it: with 5 tasks on one
  prefork worker (concurrency 2, prefetch multiplier 1) heartbeats said active=2 while `unacked`
  held 2 and the list 1. `processed` counts tasks *accepted* so far (2 while the first 2 ran).
- A prefork worker keeps heartbeating every 2 s while its processes run long tasks (the main
  process is free), and answers `inspect().active()` then. A threads-pool worker too (by hand,
  with a CPU-bound task).
- A solo-pool worker sends no heartbeat at all while it runs a task (its only thread is busy),
  reports active=0 around it, and cannot answer inspect. Hence "silent" workers: a worker whose
  heartbeats stopped (> 2 x freq + 1 s) without a `worker-offline` counts as busy with >= 1 task
  until it speaks again, says goodbye, is forgotten (`forget_after`), or is not among the
  caller's `pods` (a killed pod is gone from the Deployment, and a restarted container of the
  same pod announces itself again with worker-online).
- A `heartbeat` control command (the "wakeup" Flower and `celery events` send) makes workers
  emit a `worker-heartbeat` with `freq=5` and *no* `active`/`processed`: such an event refreshes
  liveness only and never resets a worker's active count (this monitor sends no wakeup). By hand:
  celery/worker/control.py `heartbeat`, and the table test feeds such an event.
- A warm shutdown (SIGTERM) sends `worker-offline`: the monitor drops the worker at once.
- RabbitMQ: heartbeats arrive the same way (topic exchange `celeryev`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

from .connections import DEFAULT_TIMEOUT, connect_once, kombu_connection, release
from .control import celery_app
from .urls import BrokerUnavailable, redact, scrub
from .workers import split_worker_hostname

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerState:
    hostname: str  # `<queue>@<pod>`
    queue: str | None
    pod: str | None
    active: int  # tasks executing at the last heartbeat (reserved ones excluded)
    processed: int  # tasks accepted since the worker started
    freq: float  # the worker's heartbeat interval, seconds
    timestamp: float  # the worker's own clock at the last heartbeat (epoch seconds)
    age: float  # seconds since the monitor last heard from the worker
    silent: bool  # heartbeats overdue (> 2 x freq + 1 s) without a worker-offline

    @property
    def busy(self) -> bool:
        return self.silent or self.active > 0

    @property
    def in_flight(self) -> int:
        return max(self.active, 1) if self.silent else self.active


@dataclass(frozen=True)
class QueueActivity:
    """What the heartbeats say about one queue's workers."""

    in_flight: int  # tasks executing (a silent worker counts at least 1)
    busy_pods: frozenset[str]  # pods running a task, or silent
    workers: int  # workers known (fresh or silent)


@dataclass
class _Entry:
    pod: str | None
    active: int
    processed: int
    freq: float
    timestamp: float
    seen: float  # the monitor's clock


class HeartbeatTable:
    """The latest heartbeat per worker, and what follows from it at a given time. Thread-safe.

    Fresh workers (heard within 2 x freq + 1 s) count their `active` tasks; silent ones count as
    busy with at least one task (see the module docstring); a worker-offline removes a worker at
    once; a worker silent for `forget_after` seconds is forgotten. Indexed by queue, so a tick over
    many queues costs O(workers), not O(queues x workers).
    """

    def __init__(self, *, forget_after: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        self.forget_after = forget_after
        self.clock = clock
        self._lock = threading.Lock()
        self._queues: dict[str | None, dict[str, _Entry]] = {}  # queue -> hostname -> entry

    @staticmethod
    def _split(hostname: str) -> tuple[str | None, str | None]:
        split = split_worker_hostname(hostname)
        return split if split else (None, None)

    def heartbeat(self, event: Mapping[str, Any]) -> bool:
        """A worker-heartbeat or worker-online event; whether it is the first the table has of that worker."""
        hostname = event.get("hostname")
        if not isinstance(hostname, str):
            return False
        queue, pod = self._split(hostname)
        now = self.clock()
        with self._lock:
            workers = self._queues.setdefault(queue, {})
            entry = workers.get(hostname)
            if "active" not in event:  # a wakeup heartbeat (control command): liveness only
                if entry is not None:
                    entry.seen = now
                return False
            workers[hostname] = _Entry(
                pod=pod,
                active=int(event.get("active") or 0),
                processed=int(event.get("processed") or 0),
                freq=float(event.get("freq") or 2.0),
                timestamp=float(event.get("timestamp") or 0.0),
                seen=now,
            )
        return entry is None

    def offline(self, event: Mapping[str, Any]) -> None:
        """A worker-offline event: the worker shut down (warm or cold, not killed)."""
        hostname = str(event.get("hostname"))
        with self._lock:
            self._queues.get(self._split(hostname)[0], {}).pop(hostname, None)

    def touch_all(self) -> None:
        """After a reconnect: heartbeats missed during the outage must not make workers silent."""
        now = self.clock()
        with self._lock:
            for workers in self._queues.values():
                for entry in workers.values():
                    entry.seen = now

    def _states(self, queue: str | None, pods: Collection[str] | None, every_queue: bool) -> list[WorkerState]:
        now = self.clock()
        states = []
        with self._lock:
            queues = list(self._queues) if every_queue else [queue]
            for name in queues:
                workers = self._queues.get(name)
                if not workers:
                    continue
                for hostname, entry in list(workers.items()):
                    age = now - entry.seen
                    if age > self.forget_after:
                        del workers[hostname]
                        continue
                    if pods is not None and entry.pod not in pods:
                        continue
                    states.append(WorkerState(
                        hostname=hostname, queue=name, pod=entry.pod, active=entry.active,
                        processed=entry.processed, freq=entry.freq, timestamp=entry.timestamp, age=age,
                        silent=age > 2 * entry.freq + 1,
                    ))
        return states

    def workers(self, queue: str | None = None, pods: Collection[str] | None = None) -> list[WorkerState]:
        """Known workers, of one queue or (queue=None) all, sorted by hostname."""
        return sorted(self._states(queue, pods, every_queue=queue is None), key=lambda s: s.hostname)

    def activity(self, queue: str, pods: Collection[str] | None = None) -> QueueActivity:
        states = self._states(queue, pods, every_queue=False)
        return QueueActivity(
            in_flight=sum(w.in_flight for w in states),
            busy_pods=frozenset(w.pod for w in states if w.busy and w.pod),
            workers=len(states),
        )

    def in_flight(self, queue: str, pods: Collection[str] | None = None) -> int:
        return self.activity(queue, pods).in_flight

    def busy_pods(self, queue: str, pods: Collection[str] | None = None) -> set[str]:
        return set(self.activity(queue, pods).busy_pods)


class HeartbeatMonitor:
    """Listens to one broker's worker heartbeats in a background thread (Celery's own event
    receiver, routing key `worker.#`), reconnecting with backoff, and answers per queue:

        monitor = HeartbeatMonitor(url); monitor.start()
        monitor.in_flight("jobs")              # tasks executing on jobs@* workers
        monitor.busy_pods("jobs", pods=...)    # pods of jobs@* workers with a task (or silent)
        monitor.stop()

    Pass `pods` (the queue's current pod names) where you can: it drops workers whose pod is gone.
    The answers raise BrokerUnavailable while the monitor is not connected, and for `warmup`
    seconds after (re)connecting, when not every worker has had the chance to report yet.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        warmup: float = 3.0,
        forget_after: float = 3600.0,
        reconnect_max: float = 10.0,
        poll_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        transport_options: Mapping[str, Any] | None = None,
        on_worker_online: Callable[[str], None] | None = None,
    ):
        self.url = url
        # called with the hostname, from the monitor's thread, when a worker comes online or is first
        # heard of (its worker-online event sent while the monitor was not listening yet)
        self.on_worker_online = on_worker_online
        self.transport_options = dict(transport_options or {})
        self.timeout = timeout
        self.warmup = warmup
        self.reconnect_max = reconnect_max
        self.poll_interval = poll_interval
        self.clock = clock
        self.table = HeartbeatTable(forget_after=forget_after, clock=clock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._receiver: Any = None
        self._state_lock = threading.Lock()
        self._connected_at: float | None = None
        self._ever_connected = False
        self._last_error: str | None = None
        self.events_received = 0

    def __repr__(self) -> str:
        return f"HeartbeatMonitor({redact(self.url)!r})"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # lifecycle

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"heartbeats {redact(self.url)}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0, wait: bool = True) -> None:
        """Stop listening; with wait=False only ask the thread to stop (it ends within poll_interval),
        so that many monitors stop at once instead of one after another."""
        self._stop.set()
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True
        thread, self._thread = self._thread, None
        if thread is not None and wait:
            thread.join(timeout)
        with self._state_lock:
            self._connected_at = None

    # state

    @property
    def connected(self) -> bool:
        return self._connected_at is not None

    @property
    def ready(self) -> bool:
        connected_at = self._connected_at
        return connected_at is not None and self.clock() - connected_at >= self.warmup

    @property
    def last_error(self) -> str | None:
        return self._last_error

    def wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.ready:
            if time.monotonic() >= deadline:
                return False
            self._stop.wait(0.05)
        return True

    def _check(self) -> None:
        connected_at = self._connected_at
        if connected_at is None:
            error = f" (last error: {self._last_error})" if self._last_error else ""
            raise BrokerUnavailable(self.url, f"not receiving worker heartbeats{error}")
        if self.clock() - connected_at < self.warmup:
            raise BrokerUnavailable(self.url, "heartbeat monitor warming up after connecting")

    # answers

    def in_flight(self, queue: str, pods: Collection[str] | None = None) -> int:
        """Tasks executing on the queue's workers (silent workers count >= 1). Raises BrokerUnavailable."""
        self._check()
        return self.table.in_flight(queue, pods)

    def busy_pods(self, queue: str, pods: Collection[str] | None = None) -> set[str]:
        """Pods of the queue's workers that run a task or went silent. Raises BrokerUnavailable."""
        self._check()
        return self.table.busy_pods(queue, pods)

    def activity(self, queue: str, pods: Collection[str] | None = None) -> QueueActivity:
        """in_flight and busy_pods in one pass. Raises BrokerUnavailable."""
        self._check()
        return self.table.activity(queue, pods)

    def workers(self, queue: str | None = None, pods: Collection[str] | None = None) -> list[WorkerState]:
        """Everything known now (no readiness check): for status, debugging and tests."""
        return self.table.workers(queue, pods)

    def current_workers(self, queue: str, pods: Collection[str] | None = None) -> list[WorkerState]:
        """The queue's known workers, as evidence: raises BrokerUnavailable while not connected or warming up."""
        self._check()
        return self.table.workers(queue, pods)

    # the thread

    def _on_heartbeat(self, event: Mapping[str, Any]) -> None:
        self.events_received += 1
        if self.table.heartbeat(event):  # a worker first heard of: its worker-online came before we listened
            self._tell_online(event)

    def _on_online(self, event: Mapping[str, Any]) -> None:
        self.events_received += 1
        self.table.heartbeat(event)
        self._tell_online(event)

    def _tell_online(self, event: Mapping[str, Any]) -> None:
        hostname = event.get("hostname")
        if self.on_worker_online is not None and isinstance(hostname, str):
            self.on_worker_online(hostname)

    def _on_offline(self, event: Mapping[str, Any]) -> None:
        self.events_received += 1
        self.table.offline(event)

    def _on_connected(self) -> None:
        if self._ever_connected:
            self.table.touch_all()
        self._ever_connected = True
        with self._state_lock:
            self._connected_at = self.clock()
        log.info("receiving worker heartbeats from %s", redact(self.url))

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with self._consume() as events:
                    backoff = 0.5
                    for _ in events:
                        pass
            except Exception as error:  # noqa: BLE001 - the thread never dies; it reports and reconnects
                message = scrub(f"{type(error).__name__}: {error}", self.url)
                if message != self._last_error or self.connected:
                    log.warning("worker heartbeats from %s interrupted: %s", redact(self.url), message)
                self._last_error = message
            with self._state_lock:
                self._connected_at = None
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.reconnect_max)

    @contextmanager
    def _consume(self) -> Iterator[Iterator[Any]]:
        from celery.events.receiver import EventReceiver

        monitor = self

        connection = kombu_connection(self.url, self.timeout, self.transport_options)

        class Receiver(EventReceiver):
            connect_max_retries = 0  # kombu's default retries forever: reconnecting is our loop's job

            def create_connection(self) -> Any:  # ConsumerMixin clones by default: use ours, bounded
                return connection

            def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kwargs: Any) -> None:
                monitor._on_connected()

        try:
            connect_once(connection)
            receiver = Receiver(
                connection,
                handlers={
                    "worker-heartbeat": self._on_heartbeat,
                    "worker-online": self._on_online,
                    "worker-offline": self._on_offline,
                },
                routing_key="worker.#",
                app=celery_app(),
            )
            self._receiver = receiver
            if self._stop.is_set():
                receiver.should_stop = True
            yield receiver.consume(limit=None, timeout=None, safety_interval=self.poll_interval, wakeup=False)
        finally:
            self._receiver = None
            release(connection)

