"""`--namespace` limits what the operator touches. It runs against a cluster of its own (control
plane only) so the session's all-namespaces operator does not answer for it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers.devcluster import DevCluster, own_cluster
from tests.helpers.operator import KOPF_ENTRY, PYTHON_ENTRY, apply_crds, start_operator
from tests.helpers.processes import RedisServer, start_redis
from tests.helpers.taskqueues import TaskQueues, taskqueue

pytestmark = pytest.mark.e2e


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[DevCluster]:
    with own_cluster(tmp_path / "cluster", nodes=0) as handle:
        yield handle


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.mark.parametrize("entry", [PYTHON_ENTRY, KOPF_ENTRY], ids=["python-m", "kopf-run"])
def test_operator_watches_only_the_namespaces_it_is_given(private_cluster: DevCluster, redis_server: RedisServer,
                                                          tmp_path: Path, entry: tuple[str, ...]) -> None:
    apply_crds(private_cluster)
    for name in ("team-a", "team-b", "team-c"):
        private_cluster.kubectl("create", "namespace", name)
    operator = start_operator(private_cluster, tmp_path / "operator.log", entry=entry,
                              args=("--namespace", "team-a", "--namespace", "team-c"))
    handles = {name: TaskQueues(private_cluster, name) for name in ("team-a", "team-b", "team-c")}
    try:
        body = taskqueue("shop", queues=[{"name": "q", "replicas": 0}], broker={"url": redis_server.url})
        for handle in handles.values():
            handle.apply(body)
        handles["team-a"].wait_condition("shop", "Ready", "True")
        handles["team-c"].wait_condition("shop", "Ready", "True")
        time.sleep(3)  # three resync periods in which team-b must stay untouched
        assert "status" not in handles["team-b"].get("shop")
        assert handles["team-b"].deployment("shop-worker-q") is None
    finally:
        for handle in handles.values():
            handle.close()
        operator.stop()
