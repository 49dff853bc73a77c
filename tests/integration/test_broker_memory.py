"""A Redis broker over its maxmemory, against a real redis-server (maxmemory 3mb, noeviction, as the
managed broker runs): Celery producers get Redis' OOM error, nothing held is lost, and the operator's probe
says so (BrokerAcceptingWrites), until the queue is drained."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import celery
import pytest
import redis
from celery_operator.broker.probe import probe
from celery_operator.broker.registry import BrokerRegistry

from tests.helpers.processes import RedisServer, redis_server_binary, start_redis

pytestmark = pytest.mark.integration

MAX_MEMORY = 3 * 1024 * 1024
QUEUE = "jobs"


@pytest.fixture
def small_redis(tmp_path: Path) -> Iterator[RedisServer]:
    if redis_server_binary() is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
    server = start_redis(tmp_path / "redis", extra_args=["--maxmemory", str(MAX_MEMORY),
                                                         "--maxmemory-policy", "noeviction"])
    try:
        yield server
    finally:
        server.stop()


def _producer(url: str) -> celery.Celery:
    return celery.Celery("producer", broker=url, set_as_current=False)


def _send(app: celery.Celery, size: int = 4096) -> None:
    app.send_task("myapp.tasks.work", args=["x" * size], queue=QUEUE, retry=False)


def _fill(app: celery.Celery, size: int, limit: int = 10_000) -> Exception:
    """Send until the broker refuses; the error the producer got."""
    for _ in range(limit):
        try:
            _send(app, size)
        except Exception as error:  # noqa: BLE001 - which error a producer sees is what the test reports
            return error
    raise AssertionError(f"{limit} messages of {size} bytes fitted in a maxmemory of {MAX_MEMORY} bytes")


# A large message is refused while several times its size is still free (Redis grows the request
# buffer greedily): the probe must call that broker full all the same.
@pytest.mark.parametrize("size", [4096, 16384, 32768])
def test_a_full_broker_refuses_producers_keeps_its_messages_and_the_probe_says_so(small_redis: RedisServer,
                                                                                   size: int) -> None:
    url = small_redis.url
    before = probe(url, timeout=2)
    assert before.problem is None and before.memory is not None
    assert before.memory.max == MAX_MEMORY and before.memory.policy == "noeviction" and not before.memory.full

    app = _producer(url)
    error = _fill(app, size)
    # Redis' -OOM reply, as Celery raises it (kombu's OperationalError around redis' OutOfMemoryError)
    assert "used memory > 'maxmemory'" in str(error), f"the producer is told why: {error!r}"
    client = redis.Redis.from_url(url)
    held = client.llen(QUEUE)
    assert held > 20

    full = probe(url, timeout=2)
    assert full.problem is None, "a full Redis still answers: BrokerReady stays True"
    assert full.memory is not None and full.memory.full
    for _ in range(5):
        with pytest.raises(Exception, match="maxmemory"):
            _send(app, size)
    assert client.llen(QUEUE) == held, "nothing lost, nothing added"

    for _ in range(held // 2):  # what workers do: take messages off the queue
        client.rpop(QUEUE)
    drained = probe(url, timeout=2)
    assert drained.memory is not None and not drained.memory.full
    _send(app, size)
    assert client.llen(QUEUE) == held - held // 2 + 1
    client.close()


def test_a_redis_without_maxmemory_reports_none(redis_server: RedisServer) -> None:
    result = probe(redis_server.url, timeout=2)
    assert result.problem is None and result.memory is not None
    assert not result.memory.limited and not result.memory.full


def test_a_broker_that_forbids_info_is_still_reachable_with_its_memory_unknown(tmp_path: Path) -> None:
    server = start_redis(tmp_path / "acl", extra_args=["--rename-command", "INFO", ""])
    try:
        result = probe(server.url, timeout=2)
        assert result.problem is None, "PING answered: reachable"
        assert result.memory is None
    finally:
        server.stop()


def test_the_probe_tells_which_run_of_redis_answers_and_whether_it_keeps_an_append_only_file(
        tmp_path: Path) -> None:
    """The BrokerRestarted Event rests on this: a new start of redis-server is a new run_id, and a
    server restarted on its append-only file still holds its messages, counted by count_messages."""
    workdir = tmp_path / "aof"
    server = start_redis(workdir, persistent=True)
    port = server.port
    client = redis.Redis.from_url(server.url)
    client.rpush(QUEUE, *[f"m{i}" for i in range(5)])
    first = probe(server.url, timeout=2).instance
    assert first is not None and first.append_only
    client.close()
    server.stop()
    server = start_redis(workdir, port=port, persistent=True)
    registry = BrokerRegistry(timeout=2, on_arrival=lambda url: None)
    try:
        again = probe(server.url, timeout=2).instance
        assert again is not None and again.run_id != first.run_id, "a new start, a new run_id"
        assert registry.count_messages(server.url, [QUEUE, "empty"]) == 5
    finally:
        registry.close()
        server.stop()
    ephemeral = start_redis(tmp_path / "ephemeral")
    try:
        instance = probe(ephemeral.url, timeout=2).instance
        assert instance is not None and not instance.append_only
    finally:
        ephemeral.stop()
