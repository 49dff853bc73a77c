from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers.brokers import RabbitBroker
from tests.helpers.devcluster import DevCluster
from tests.helpers.operator import OperatorProcess, apply_crds, start_operator
from tests.helpers.processes import RedisServer, start_redis
from tests.helpers.taskqueues import TaskQueues


@pytest.fixture(scope="session")
def crds(devcluster: DevCluster) -> None:
    apply_crds(devcluster)


@pytest.fixture(scope="session")
def operator(devcluster: DevCluster, crds: None, tmp_path_factory: pytest.TempPathFactory) -> OperatorProcess:
    """One operator for the session, watching every namespace, resyncing every second."""
    running = start_operator(devcluster, tmp_path_factory.mktemp("operator") / "operator.log")
    yield running
    running.stop()


@pytest.fixture
def tqs(devcluster: DevCluster, namespace: str, operator: OperatorProcess) -> Iterator[TaskQueues]:
    """TaskQueues in the test's own namespace, with the session's operator running."""
    handle = TaskQueues(devcluster, namespace)
    yield handle
    handle.close()


@pytest.fixture
def redis_server(tmp_path: Path, devcluster: DevCluster) -> Iterator[RedisServer]:
    """A Redis of the test's own on this machine's address on the cluster's bridge, which pods reach."""
    server = start_redis(tmp_path / "redis", host=devcluster.host_ip)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory, devcluster: DevCluster) -> Iterator[RabbitBroker]:
    """A real RabbitMQ for the AMQP tests of one module (some stop and restart it), where pods reach it."""
    server = RabbitBroker(tmp_path_factory.mktemp("rabbitmq"), host=devcluster.host_ip)
    server.start()
    yield server
    server.stop()
