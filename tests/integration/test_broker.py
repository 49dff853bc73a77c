"""The broker package against real brokers and real Celery workers: a password-protected
redis-server and a RabbitMQ node started by the test, workers named the operator's way (`<queue>@<pod>`, concurrency
2, prefetch multiplier 1) running tasks the test holds and releases (tests/helpers/broker_app.py).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import kombu
import pytest
import redis
from celery_operator.broker.control import busy_workers
from celery_operator.broker.depth import AmqpDepthReader, QueueDepth, RedisDepthReader, depth_reader_for
from celery_operator.broker.heartbeats import HeartbeatMonitor, HeartbeatTable
from celery_operator.broker.urls import BrokerUnavailable, redact

from tests.helpers import brokers
from tests.helpers.brokers import (
    RABBIT_PASSWORD,
    REDIS_PASSWORD,
    Gate,
    RabbitBroker,
    RedisBroker,
    producer,
    send_holds,
    start_test_worker,
)
from tests.helpers.processes import free_port
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.integration

METHODS = ["lua", "pipeline"]
SEP = "\x06\x16"


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitBroker]:
    """A RabbitMQ node of its own (about 5 s to start), shared by this module's AMQP tests."""
    server = RabbitBroker(tmp_path_factory.mktemp("rabbitmq"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def silent_listener() -> Iterator[int]:
    with brokers.silent_listener() as port:
        yield port


@pytest.fixture
def gate(tmp_path: Path) -> Gate:
    directory = tmp_path / "gate"
    directory.mkdir()
    return Gate(directory)


def assert_no_secret(text: str) -> None:
    assert REDIS_PASSWORD not in text and RABBIT_PASSWORD not in text, text


# --- redact and the heartbeat table (no broker) ---------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:pw@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://default:p%40ss@r.example:6380/1", "rediss://default:***@r.example:6380/1"),
        ("amqp://user:pass@rabbit:5672//", "amqp://user:***@rabbit:5672//"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("amqp://user@rabbit//", "amqp://user@rabbit//"),
        ("redis://r:6379/0?password=pw&db=1", "redis://r:6379/0?password=***&db=1"),
        ("amqp://a:x@h1//;amqp://b:y@h2//", "amqp://a:***@h1//;amqp://b:***@h2//"),
    ],
)
def test_redact_hides_the_password(url: str, expected: str) -> None:
    assert redact(url) == expected


def test_broker_unavailable_message_is_scrubbed_of_the_password() -> None:
    url = "redis://:p%40ss-word@host:6379/0"
    error = BrokerUnavailable(url, "cannot read", RuntimeError(f"failed for {url} with p@ss-word"))
    assert "p%40ss-word" not in str(error) and "p@ss-word" not in str(error)
    assert str(error) == "broker redis://:***@host:6379/0: cannot read: RuntimeError: failed for redis://:***@host:6379/0 with ***"


def test_depth_reader_for_picks_the_reader_by_scheme() -> None:
    assert isinstance(depth_reader_for("redis://:pw@localhost:1/0"), RedisDepthReader)
    assert isinstance(depth_reader_for("rediss://localhost:1/0"), RedisDepthReader)
    assert isinstance(depth_reader_for("amqp://u:pw@localhost:1//"), AmqpDepthReader)
    with pytest.raises(ValueError) as error:
        depth_reader_for("sqs://key:pw@region")
    assert "pw" not in str(error.value)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def beat(hostname: str, active: int, freq: float = 2.0) -> dict[str, object]:
    return {"hostname": hostname, "active": active, "processed": 7, "freq": freq, "timestamp": 1.0}


def test_heartbeat_table_fresh_silent_offline_and_forgotten() -> None:
    clock = FakeClock()
    table = HeartbeatTable(forget_after=600, clock=clock)
    table.heartbeat(beat("jobs@a", 2))
    table.heartbeat(beat("jobs@b", 0))
    table.heartbeat(beat("other@c", 1))
    table.heartbeat(beat("celery@host", 3))  # not named the operator's way: no queue of ours
    assert table.in_flight("jobs") == 2
    assert table.busy_pods("jobs") == {"a"}
    assert table.in_flight("jobs", pods={"b"}) == 0

    clock.now += 5.0  # 2 x freq + 1: still fresh
    assert table.busy_pods("jobs") == {"a"}
    clock.now += 0.5  # overdue: silent, so busy with at least one task (a solo worker inside a task)
    assert table.busy_pods("jobs") == {"a", "b"}
    assert table.in_flight("jobs") == 3
    assert all(w.silent for w in table.workers("jobs"))

    table.heartbeat(beat("jobs@b", 0))  # speaks again
    assert table.busy_pods("jobs") == {"a"}
    table.offline({"hostname": "jobs@a"})  # warm shutdown said goodbye
    assert table.busy_pods("jobs") == set() and table.in_flight("jobs") == 0

    clock.now += 601
    assert table.workers() == []


def test_heartbeat_without_active_only_refreshes_liveness() -> None:
    clock = FakeClock()
    table = HeartbeatTable(clock=clock)
    table.heartbeat(beat("jobs@a", 2))
    clock.now += 4.0
    table.heartbeat({"hostname": "jobs@a", "freq": 5})  # what a `heartbeat` control command sends
    table.heartbeat({"hostname": "jobs@new", "freq": 5})
    clock.now += 4.0
    [worker] = table.workers()
    assert (worker.hostname, worker.active, worker.freq, worker.silent) == ("jobs@a", 2, 2.0, False)


def test_heartbeat_table_touch_all_after_a_reconnect() -> None:
    clock = FakeClock()
    table = HeartbeatTable(clock=clock)
    table.heartbeat(beat("jobs@a", 0))
    clock.now += 30
    table.touch_all()
    assert table.busy_pods("jobs") == set()


# --- Redis: pending -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_redis_pending_counts_plain_and_priority_messages(redis_broker: RedisBroker, gate: Gate, method: str) -> None:
    app = producer(redis_broker.url)
    send_holds(app, gate, "jobs", 1)  # no priority
    for priority in (0, 1, 5, 9):
        send_holds(app, gate, "jobs", 1, priority=priority)
    send_holds(app, gate, "other", 2, priority=7)
    client = redis_broker.client()
    # kombu's default steps 0,3,6,9: 0 and 1 -> `jobs`, 5 -> `jobs\x06\x163`, 9 -> `jobs\x06\x169`
    assert [client.llen(k) for k in ("jobs", f"jobs{SEP}3", f"jobs{SEP}6", f"jobs{SEP}9")] == [3, 1, 0, 1]
    assert client.llen(f"other{SEP}6") == 2

    # An app with other priority steps: priority 5 lands in `jobs\x06\x165`, which is counted too.
    send_holds(producer(redis_broker.url, broker_transport_options={"priority_steps": list(range(10))}),
               gate, "jobs", 1, priority=5)
    assert client.llen(f"jobs{SEP}5") == 1

    reader = RedisDepthReader(redis_broker.url, method=method)
    assert reader.read(["jobs", "other", "missing"]) == {
        "jobs": QueueDepth(6, 0), "other": QueueDepth(2, 0), "missing": QueueDepth(0, 0),
    }
    assert reader.read([]) == {}
    reader.close()


@pytest.mark.parametrize("method", METHODS)
def test_redis_read_is_one_round_trip(redis_broker: RedisBroker, gate: Gate, method: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    send_holds(producer(redis_broker.url), gate, "q7", 3)
    reader = RedisDepthReader(redis_broker.url, method=method)
    queues = [f"q{i}" for i in range(50)]
    reader.read(queues)  # the first Lua read loads the script (NOSCRIPT, SCRIPT LOAD, EVALSHA)
    sent: list[int] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(self, command, check_health=True):  # type: ignore[no-untyped-def]
        sent.append(1)
        return original(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    assert reader.read(queues)["q7"] == QueueDepth(3, 0)
    assert len(sent) == 1


def test_redis_auto_falls_back_to_the_pipeline_when_scripts_are_refused(redis_broker: RedisBroker, gate: Gate) -> None:
    send_holds(producer(redis_broker.url), gate, "jobs", 2)
    admin = redis_broker.client()
    admin.execute_command("ACL", "SETUSER", "noscript", "on", ">pw2", "~*", "&*", "+@all", "-@scripting")
    url = f"redis://noscript:pw2@127.0.0.1:{redis_broker.port}/0"
    with pytest.raises(BrokerUnavailable):
        RedisDepthReader(url, method="lua").read(["jobs"])
    reader = RedisDepthReader(url, method="auto")
    assert reader.read(["jobs"]) == {"jobs": QueueDepth(2, 0)}
    assert reader.method == "pipeline"


# --- Redis: reserved ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_redis_reserved_messages_are_attributed_through_kombu_bindings(redis_broker: RedisBroker, method: str) -> None:
    """Messages received and not acked (kombu's `unacked` hash), routed through a direct and a topic
    exchange, count as reserved for the queue they came from; those still waiting as pending."""
    direct = kombu.Exchange("tasks", type="direct")
    topic = kombu.Exchange("events", type="topic")
    high = kombu.Queue("high", direct, routing_key="tasks.high")
    fast = kombu.Queue("fast", topic, routing_key="fast.#")
    with kombu.Connection(redis_broker.url) as connection:
        producer_ = connection.Producer()
        for _ in range(3):
            producer_.publish({"n": 1}, exchange=direct, routing_key="tasks.high", declare=[high])
            producer_.publish({"n": 1}, exchange=topic, routing_key="fast.a.b", declare=[fast])
        received = []
        with connection.SimpleQueue(high) as simple_high, connection.SimpleQueue(fast) as simple_fast:
            received += [simple_high.get(timeout=5), simple_fast.get(timeout=5)]  # not acked
            client = redis_broker.client()
            assert client.hlen("unacked") >= 2
            reader = RedisDepthReader(redis_broker.url, method=method)
            depth = reader.read(["high", "fast", "jobs"])
            # SimpleQueue consumers may prefetch more than one: count what kombu holds unacked.
            held = {"high": 0, "fast": 0}
            for value in client.hvals("unacked"):
                _message, _exchange, routing_key = json.loads(value)
                held["high" if routing_key == "tasks.high" else "fast"] += 1
            assert depth["high"] == QueueDepth(3 - held["high"], held["high"])
            assert depth["fast"] == QueueDepth(3 - held["fast"], held["fast"])
            assert depth["jobs"] == QueueDepth(0, 0)
            assert held["high"] >= 1 and held["fast"] >= 1
            for message in received:
                message.ack()


def test_redis_reserved_parsing_agrees_between_lua_and_pipeline(redis_broker: RedisBroker) -> None:
    """Odd `unacked` values: names needing JSON escapes take the slow path, garbage is skipped."""
    client = redis_broker.client()
    message = {"body": "e30=", "headers": {"task": "t"}, "properties": {"delivery_tag": "x"}}
    client.sadd("_kombu.binding.we\"ird", SEP.join(["rk\\1", "", "jobs"]))
    client.hset("unacked", mapping={
        "plain": json.dumps([message, "", "jobs"]),
        "escaped": json.dumps([message, 'we"ird', "rk\\1"]),
        "unicode": json.dumps([message, "", "jöbs"]),
        "garbage": "not json at all",
        "short": "[]",
        "other": json.dumps([message, "", "other"]),
    })
    results = {method: RedisDepthReader(redis_broker.url, method=method).read(["jobs", "other", "jöbs"])
               for method in METHODS}
    assert results["lua"] == results["pipeline"] == {
        "jobs": QueueDepth(0, 2), "other": QueueDepth(0, 1), "jöbs": QueueDepth(0, 1),
    }


# --- Redis: real workers --------------------------------------------------------------------------


@pytest.fixture
def redis_monitor(redis_broker: RedisBroker):
    monitor = HeartbeatMonitor(redis_broker.url, warmup=0.5)
    monitor.start()
    assert monitor.wait_ready(15), monitor.last_error
    yield monitor
    monitor.stop()


def test_redis_running_and_reserved_tasks_with_a_real_worker(
    redis_broker: RedisBroker, redis_monitor: HeartbeatMonitor, gate: Gate, tmp_path: Path
) -> None:
    worker = start_test_worker(redis_broker.url, "work", "pod-a", tmp_path)
    try:
        wait_for(lambda: redis_monitor.workers("work"), 30, "the worker's first heartbeat")
        reader = RedisDepthReader(redis_broker.url)
        send_holds(producer(redis_broker.url), gate, "work", 5)

        # concurrency 2, prefetch multiplier 1: 2 running, 2 reserved (acked only when started), 1 waiting
        wait_for(lambda: len(gate.started()) == 2, 30, "two tasks running")
        wait_for(lambda: reader.read(["work"])["work"] == QueueDepth(1, 2), 15, "1 pending and 2 reserved")
        wait_for(lambda: redis_monitor.in_flight("work") == 2, 10, "heartbeats saying active=2")
        assert redis_monitor.busy_pods("work") == {"pod-a"}
        [state] = redis_monitor.workers("work")
        assert state.processed == 2  # `processed` counts accepted (started) tasks, not finished ones

        # A prefork worker keeps heartbeating while its processes run long tasks.
        first = state.timestamp
        wait_for(lambda: redis_monitor.workers("work")[0].timestamp >= first + 4, 10, "two more heartbeats")
        assert redis_monitor.in_flight("work") == 2 and not redis_monitor.workers("work")[0].silent
        assert busy_workers(redis_broker.url, ["work@pod-a"], timeout=5) == {"work@pod-a"}

        gate.release()
        wait_for(lambda: reader.read(["work"])["work"] == QueueDepth(0, 0), 30, "queue drained")
        wait_for(lambda: redis_monitor.in_flight("work") == 0, 15, "heartbeats saying active=0")
        assert redis_monitor.busy_pods("work") == set()
        assert busy_workers(redis_broker.url, ["work@pod-a"], timeout=5) == set()
    finally:
        worker.stop()


def test_a_worker_online_before_the_monitor_listened_is_told_at_its_first_heartbeat(
    redis_broker: RedisBroker, tmp_path: Path
) -> None:
    """The scaler's wake at a new worker must not depend on hearing its worker-online event: a monitor
    that (re)connects while a new broker comes up misses it (seen in an e2e run)."""
    worker = start_test_worker(redis_broker.url, "late", "pod-l", tmp_path)
    heard = HeartbeatMonitor(redis_broker.url, warmup=0.5)
    heard.start()
    try:
        wait_for(lambda: heard.workers("late") if heard.wait_ready(1) else None, 30, "the worker's heartbeats")
    finally:
        heard.stop()
    told: list[str] = []
    monitor = HeartbeatMonitor(redis_broker.url, warmup=0.5, on_worker_online=told.append)
    monitor.start()
    try:
        wait_for(lambda: told, 10, "the running worker told at its first heartbeat the monitor hears")
        assert told == ["late@pod-l"]
        first = wait_for(lambda: monitor.workers("late"), 10, "the worker in the table")[0].timestamp
        wait_for(lambda: monitor.workers("late")[0].timestamp >= first + 4, 10, "two more heartbeats")
        assert told == ["late@pod-l"], "told once: the next heartbeats are of a known worker"
    finally:
        monitor.stop()
        worker.stop()


def test_busy_workers_names_the_busy_worker_and_not_the_idle_one(
    redis_broker: RedisBroker, redis_monitor: HeartbeatMonitor, gate: Gate, tmp_path: Path
) -> None:
    workers = [start_test_worker(redis_broker.url, "pick", pod, tmp_path) for pod in ("pod-a", "pod-b")]
    names = ["pick@pod-a", "pick@pod-b"]
    try:
        wait_for(lambda: len(redis_monitor.workers("pick")) == 2, 30, "both workers heartbeating")
        send_holds(producer(redis_broker.url), gate, "pick", 1)
        [hostname] = wait_for(lambda: list(gate.started().values()), 30, "the task started")
        idle = next(name for name in names if name != hostname)

        started = time.monotonic()
        assert busy_workers(redis_broker.url, names, timeout=5) == {hostname}
        assert time.monotonic() - started < 4, "returns as soon as every named worker answered"
        assert busy_workers(redis_broker.url, [*names, "pick@gone"], timeout=1) == {hostname, "pick@gone"}
        assert busy_workers(redis_broker.url, [*names, "pick@gone"], timeout=1, unanswered_are_busy=False) == {hostname}
        assert busy_workers(redis_broker.url, [idle], timeout=5) == set()
        assert busy_workers(redis_broker.url, [], timeout=5) == set()

        pod = hostname.split("@", 1)[1]
        wait_for(lambda: redis_monitor.busy_pods("pick") == {pod}, 10, f"heartbeats naming {pod} busy")
        assert redis_monitor.in_flight("pick") == 1
        assert redis_monitor.busy_pods("pick", pods={idle.split("@")[1]}) == set()
        gate.release()
        wait_for(lambda: busy_workers(redis_broker.url, names, timeout=5) == set(), 15, "both idle")
    finally:
        for worker in workers:
            worker.stop()


def test_a_warm_shutdown_drops_the_worker_at_once(
    redis_broker: RedisBroker, redis_monitor: HeartbeatMonitor, tmp_path: Path
) -> None:
    worker = start_test_worker(redis_broker.url, "bye", "pod-a", tmp_path)
    try:
        wait_for(lambda: redis_monitor.workers("bye"), 30, "the worker's first heartbeat")
    finally:
        assert worker.stop() == 0
    # Gone on worker-offline; a worker whose heartbeats merely stop is kept (as silent, i.e. busy).
    wait_for(lambda: redis_monitor.workers("bye") == [], 3, "the worker-offline event")


def test_a_solo_worker_inside_a_task_goes_silent_and_counts_busy(
    redis_broker: RedisBroker, redis_monitor: HeartbeatMonitor, gate: Gate, tmp_path: Path
) -> None:
    worker = start_test_worker(redis_broker.url, "solo", "pod-s", tmp_path, pool="solo", concurrency=1)
    try:
        wait_for(lambda: redis_monitor.workers("solo"), 30, "the worker's first heartbeat")
        send_holds(producer(redis_broker.url), gate, "solo", 1)
        wait_for(gate.started, 30, "the task started")
        # No heartbeat while its only thread runs the task: after 2 x freq + 1 s it is silent, i.e. busy.
        wait_for(lambda: redis_monitor.workers("solo")[0].silent, 10, "the solo worker going silent")
        assert redis_monitor.workers("solo")[0].active == 0  # it never reported the running task
        assert redis_monitor.busy_pods("solo") == {"pod-s"}
        assert redis_monitor.in_flight("solo") == 1
        assert busy_workers(redis_broker.url, ["solo@pod-s"], timeout=1) == {"solo@pod-s"}  # cannot answer
        assert busy_workers(redis_broker.url, ["solo@pod-s"], timeout=1, unanswered_are_busy=False) == set()
        gate.release()
        wait_for(lambda: not redis_monitor.workers("solo")[0].silent, 10, "heartbeats again")
        assert redis_monitor.in_flight("solo") == 0
    finally:
        worker.stop()


# --- Redis: failures ------------------------------------------------------------------------------


def test_unreachable_redis_raises_broker_unavailable_without_the_password(silent_listener: int) -> None:
    closed = free_port()  # nobody listens there
    for port, timeout in ((closed, 1.0), (silent_listener, 0.5)):
        url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}/0"
        for method in METHODS:
            reader = RedisDepthReader(url, timeout=timeout, method=method)  # type: ignore[arg-type]
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable) as error:
                reader.read(["jobs"])
            assert time.monotonic() - started < timeout + 0.5
            assert f"redis://:***@127.0.0.1:{port}/0" in str(error.value)
            assert_no_secret(str(error.value) + repr(error.value))
            assert error.value.__cause__ is None
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as error:
            busy_workers(url, ["jobs@a"], timeout=timeout)
        assert time.monotonic() - started < 2 * timeout + 2
        assert_no_secret(str(error.value))


def test_monitor_without_a_broker_says_unavailable_and_stops_cleanly(silent_listener: int) -> None:
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{silent_listener}/0"
    monitor = HeartbeatMonitor(url, timeout=0.5)
    monitor.start()
    try:
        wait_for(lambda: monitor.last_error, 10, "the first connection error")
        with pytest.raises(BrokerUnavailable) as error:
            monitor.in_flight("jobs")
        assert "not receiving worker heartbeats" in str(error.value)
        assert_no_secret(str(error.value))
        assert_no_secret(repr(monitor) + "".join(t.name for t in threading.enumerate()))
    finally:
        started = time.monotonic()
        monitor.stop()
        assert time.monotonic() - started < 3
    assert not any(t.name.startswith("heartbeats") and t.is_alive() for t in threading.enumerate())


def test_reader_and_monitor_recover_after_a_redis_restart(
    redis_broker: RedisBroker, redis_monitor: HeartbeatMonitor, tmp_path: Path
) -> None:
    reader = RedisDepthReader(redis_broker.url, timeout=1.0)
    assert reader.read(["jobs"]) == {"jobs": QueueDepth(0, 0)}
    worker = start_test_worker(redis_broker.url, "back", "pod-a", tmp_path)
    try:
        wait_for(lambda: redis_monitor.workers("back"), 30, "the worker's first heartbeat")
        redis_broker.stop()
        with pytest.raises(BrokerUnavailable):
            reader.read(["jobs"])
        wait_for(lambda: not redis_monitor.connected, 30, "the monitor noticing")
        with pytest.raises(BrokerUnavailable):
            redis_monitor.in_flight("back")
        redis_broker.start()
        assert reader.read(["jobs"]) == {"jobs": QueueDepth(0, 0)}
        assert redis_monitor.wait_ready(30), redis_monitor.last_error
        seen = redis_monitor.events_received
        wait_for(lambda: redis_monitor.events_received > seen + 1, 30, "heartbeats after the restart")
        assert redis_monitor.in_flight("back") == 0
    finally:
        worker.stop()


# --- RabbitMQ -------------------------------------------------------------------------------------


def test_amqp_pending_counts_ready_messages(rabbitmq: RabbitBroker, gate: Gate) -> None:
    prio = kombu.Queue("prio", kombu.Exchange("prio"), routing_key="prio", queue_arguments={"x-max-priority": 10})
    app = producer(rabbitmq.url, task_queues=[prio])
    send_holds(app, gate, "plain", 3)
    for priority in (0, 5, 9):
        send_holds(app, gate, "prio", 1, priority=priority)
    reader = AmqpDepthReader(rabbitmq.url)
    try:
        expected = {"plain": QueueDepth(3, 0), "never-declared": QueueDepth(0, 0), "prio": QueueDepth(3, 0)}
        assert reader.read(["plain", "never-declared", "prio"]) == expected
        connection = reader._connection
        assert reader.read(["never-declared", "plain", "prio"]) == expected  # after a 404 closed the channel
        assert reader._connection is connection, "one connection reused across reads"
    finally:
        reader.close()


def test_amqp_in_flight_from_heartbeats_while_reserved_stay_invisible(
    rabbitmq: RabbitBroker, gate: Gate, tmp_path: Path
) -> None:
    monitor = HeartbeatMonitor(rabbitmq.url, warmup=0.5)
    monitor.start()
    worker = start_test_worker(rabbitmq.url, "amqp-work", "pod-r", tmp_path)
    reader = AmqpDepthReader(rabbitmq.url)
    try:
        assert monitor.wait_ready(20), monitor.last_error
        wait_for(lambda: monitor.workers("amqp-work"), 30, "the worker's first heartbeat")
        send_holds(producer(rabbitmq.url), gate, "amqp-work", 5)
        wait_for(lambda: len(gate.started()) == 2, 30, "two tasks running")
        wait_for(lambda: monitor.in_flight("amqp-work") == 2, 10, "heartbeats saying active=2")
        # 2 running (acked), 2 prefetched by the worker (unacked: not in message_count), 1 ready.
        wait_for(lambda: reader.read(["amqp-work"])["amqp-work"] == QueueDepth(1, 0), 10, "1 ready message")
        assert monitor.busy_pods("amqp-work") == {"pod-r"}
        assert busy_workers(rabbitmq.url, ["amqp-work@pod-r", "amqp-work@gone"], timeout=2) == {
            "amqp-work@pod-r", "amqp-work@gone"}
        gate.release()
        wait_for(lambda: monitor.in_flight("amqp-work") == 0, 30, "heartbeats saying active=0")
        assert reader.read(["amqp-work"])["amqp-work"] == QueueDepth(0, 0)
        assert busy_workers(rabbitmq.url, ["amqp-work@pod-r"], timeout=2) == set()
    finally:
        worker.stop()
        monitor.stop()
        reader.close()


def test_unreachable_amqp_raises_broker_unavailable_without_the_password(silent_listener: int) -> None:
    closed = free_port()
    for port, timeout in ((closed, 1.0), (silent_listener, 0.5)):
        url = f"amqp://operator:{RABBIT_PASSWORD}@127.0.0.1:{port}//"
        reader = AmqpDepthReader(url, timeout=timeout)
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as error:
            reader.read(["jobs"])
        assert time.monotonic() - started < 2 * timeout + 0.5
        assert f"amqp://operator:***@127.0.0.1:{port}//" in str(error.value)
        assert_no_secret(str(error.value) + repr(error.value))
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable) as error:
            busy_workers(url, ["jobs@a"], timeout=timeout)
        assert time.monotonic() - started < 2 * timeout + 2
        assert_no_secret(str(error.value))


def test_amqp_wrong_password_is_unavailable_and_says_so(rabbitmq: RabbitBroker) -> None:
    url = rabbitmq.url.replace(RABBIT_PASSWORD, "wrong-" + RABBIT_PASSWORD)
    with pytest.raises(BrokerUnavailable) as error:
        AmqpDepthReader(url, timeout=3).read(["jobs"])
    assert "ACCESS_REFUSED" in str(error.value) or "Access" in str(error.value)
    assert_no_secret(str(error.value))
    assert "wrong-" not in str(error.value)
