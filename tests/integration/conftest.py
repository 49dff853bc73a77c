from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.brokers import RedisBroker
from tests.helpers.processes import RedisServer, redis_server_binary, start_redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free 127.0.0.1 port, stopped after the test; `.url` is its URL."""
    if redis_server_binary() is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_broker(tmp_path: Path) -> Iterator[RedisBroker]:
    """A password-protected redis-server on a free port, for one test."""
    server = RedisBroker(tmp_path / "redis-broker")
    server.start()
    try:
        yield server
    finally:
        server.stop()
