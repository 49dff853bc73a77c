"""1,000 tasks through faults on two real nodes: every task id accounted for.

A devcluster of its own with two nodes, the chart's two operator replicas (a Lease decides which
acts), and a Redis on the host as the TaskQueue's broker (it outlives the nodes, as a real broker
outlives a lost machine). One autoscaled queue of at most four single-slot workers takes 1,000
`record` tasks of 0–500 ms sent at once, so it scales 0 → 4 → 0 while these happen for real:
- a worker pod is deleted while it runs a task (its warm shutdown must finish or give back its work);
- the leading operator's main process is killed (SIGKILL: no goodbye, no Lease release);
- with late acknowledgement, one of the two nodes is stopped (kubelet, containerd and every container
  on it killed): its workers' tasks die mid-run and come back from kombu's `unacked` hash after the
  transport's visibility timeout; the leader is on that node, so the standby takes over.

With Celery's default early ack a task that dies with its node is lost by design (it was acked when it
started), so the node stop runs only with `acks_late`, where a task may run twice: every id must be
done at least once and the duplicates are counted. Without the node stop every id must run exactly once.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celery
import pytest
import redis

from tests.helpers import operator_ha as ha
from tests.helpers.devcluster import DevCluster, own_cluster
from tests.helpers.processes import RedisServer, start_redis
from tests.helpers.taskqueues import TaskQueues, taskqueue
from tests.helpers.waiting import ConditionNotMet, wait_for

from devcluster import cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

TASKS, MAX_WORKERS = 1000, 4
NAMESPACE = "faults"
WORKER_PODS = "app.kubernetes.io/component=worker"
# kombu's Redis transport: a dead worker's unacknowledged messages return once they are this old,
# looked for every 2 s (its defaults: an hour, and a sweep every ~100 s)
LATE_ACK_ENV = [
    {"name": "CELERY_TASK_ACKS_LATE", "value": "true"},
    {"name": "CELERY_BROKER_TRANSPORT_OPTIONS",
     "value": json.dumps({"visibility_timeout": 30, "unacked_restore_interval": 2, "unacked_restore_throttle": 1})},
]


@dataclass(frozen=True)
class Accounting:
    sent: int
    runs: list[int]  # the number of every task run, in the order they were recorded

    @property
    def missing(self) -> list[int]:
        return sorted(set(range(self.sent)) - set(self.runs))

    @property
    def duplicated(self) -> int:
        return len(self.runs) - len(set(self.runs))

    def summary(self) -> str:
        return (f"sent {self.sent}, completed {len(set(self.runs))}, lost {len(self.missing)}, "
                f"duplicated {self.duplicated}")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with own_cluster(tmp_path_factory.mktemp("faults") / "cluster", nodes=2) as handle:
        ha.install(handle)
        handle.kubectl("create", "namespace", NAMESPACE)
        yield handle


@pytest.fixture
def broker(two_nodes: DevCluster, tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path / "redis", host=two_nodes.host_ip)
    yield server
    server.stop()


@pytest.fixture
def tqs(two_nodes: DevCluster) -> Iterator[TaskQueues]:
    handle = TaskQueues(two_nodes, NAMESPACE)
    yield handle
    handle.close()


def faulty_queue(name: str, url: str, env: list[dict[str, str]]) -> dict[str, Any]:
    return taskqueue(name, broker={"url": url}, env=env,
                     queues=[{"name": "jobs", "concurrency": 1, "terminationGracePeriodSeconds": 60,
                              "autoscaling": {"maxReplicas": MAX_WORKERS}}],
                     autoscaling={"pollIntervalSeconds": 1, "scaleDownStabilizationSeconds": 10})


def send_burst(url: str, key: str, count: int) -> None:
    """`count` record tasks of 0–500 ms (the same durations every run), sent at once."""
    durations = random.Random(1000).choices(range(0, 501), k=count)
    producer = celery.Celery(broker=url)
    with producer.connection_for_write() as connection:
        for number, milliseconds in enumerate(durations):
            producer.send_task("myapp.tasks.record", args=[key, number, milliseconds / 1000], queue="jobs",
                               connection=connection, ignore_result=True)


def runs(url: str, key: str) -> list[int]:
    with redis.Redis.from_url(url) as client:
        return [json.loads(entry)["value"] for entry in client.lrange(key, 0, -1)]


def hostnames(url: str, key: str) -> set[str]:
    with redis.Redis.from_url(url) as client:
        return {json.loads(entry)["hostname"] for entry in client.lrange(key, 0, -1)}


def replicas(tqs: TaskQueues, name: str) -> int | None:
    deployment = tqs.deployment(f"{name}-worker-jobs")
    return None if deployment is None else deployment.spec.replicas


def running_workers(tqs: TaskQueues, name: str) -> list[Any]:
    selector = f"{WORKER_PODS},app.kubernetes.io/instance={name}"
    return [pod for pod in tqs.core.list_namespaced_pod(NAMESPACE, label_selector=selector).items
            if pod.status.phase == "Running" and not pod.metadata.deletion_timestamp
            and all(status.ready for status in pod.status.container_statuses or [])]


def wait_done(url: str, key: str, at_least: int, timeout: float) -> None:
    wait_for(lambda: len(set(runs(url, key))) >= at_least, timeout, f"{at_least} tasks done", interval=0.5)


def delete_a_busy_worker(tqs: TaskQueues, name: str) -> str:
    """A worker pod of a queue with a backlog and one slot is always mid-task: delete one (gracefully)."""
    [victim, *_] = wait_for(lambda: running_workers(tqs, name), 60, "a running worker pod")
    tqs.core.delete_namespaced_pod(victim.metadata.name, NAMESPACE)
    return victim.metadata.name


def kill_the_leader(devcluster: DevCluster) -> str:
    """SIGKILL the leading operator's main process from the host; wait until a replica leads again."""
    leader = ha.holder(devcluster)
    pod = ha.operator_pods(devcluster)[leader]
    killed_at = ha.utcnow()
    ha.signal_container(pod, signal.SIGKILL)

    wait_for(lambda: ha.renewed_since(devcluster, killed_at), 90,
             "a live operator replica renewing the Lease after the kill", interval=0.5)
    return leader


def stop_the_leaders_node(devcluster: DevCluster, tqs: TaskQueues, name: str) -> tuple[str, str, int]:
    """Stop the node the leader runs on (its standby on the other node must take over): the leader,
    the node, and how many of the queue's running workers were on it."""
    leader = ha.holder(devcluster)
    node = ha.operator_pods(devcluster)[leader]["spec"]["nodeName"]
    workers_on_it = sum(pod.spec.node_name == node for pod in running_workers(tqs, name))
    cluster.stop_node(devcluster.dir, devcluster.node_names.index(node) + 1)
    return leader, node, workers_on_it


def diagnostics(devcluster: DevCluster, url: str, key: str, sent: int) -> str:
    pods = devcluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
    with redis.Redis.from_url(url) as client:
        queues = {name: client.llen(name) for name in ("jobs",)} | {"unacked": client.hlen("unacked")}
    return f"{Accounting(sent, runs(url, key)).summary()}\nbroker: {queues}\nlease: {ha.lease(devcluster)}\n{pods}"


def run_through(devcluster: DevCluster, tqs: TaskQueues, broker: RedisServer, name: str,
                env: list[dict[str, str]], stop_a_node: bool) -> Accounting:
    key = f"{name}-runs"
    tqs.apply(faulty_queue(name, broker.url, env))
    wait_for(lambda: replicas(tqs, name) == 0, 120, "the queue's worker Deployment at zero")
    started = time.monotonic()
    send_burst(broker.url, key, TASKS)
    try:
        wait_for(lambda: replicas(tqs, name) == MAX_WORKERS, 60, f"the scale-up to {MAX_WORKERS}")
        wait_done(broker.url, key, 50, 120)
        deleted = delete_a_busy_worker(tqs, name)
        wait_done(broker.url, key, 150, 120)
        killed = kill_the_leader(devcluster)
        print(f"\n{name}: worker {deleted} deleted, leader {killed} killed at "
              f"{len(set(runs(broker.url, key)))} done")
        if stop_a_node:
            wait_done(broker.url, key, 300, 120)
            leader, node, workers_lost = stop_the_leaders_node(devcluster, tqs, name)
            wait_for(lambda: ha.holder(devcluster) not in ("", leader), 60,
                     "the standby to take the Lease of the stopped node's leader", interval=0.5)
            print(f"{name}: node {node} stopped (leader {leader} and {workers_lost} running workers on it) at "
                  f"{len(set(runs(broker.url, key)))} done")
        wait_for(lambda: not Accounting(TASKS, runs(broker.url, key)).missing, 600,
                 f"all {TASKS} tasks done", interval=1)
        drained = time.monotonic() - started
        wait_for(lambda: replicas(tqs, name) == 0, 180, "the return to zero workers", interval=1)
    except ConditionNotMet as timeout:
        raise AssertionError(f"{timeout}\n{diagnostics(devcluster, broker.url, key, TASKS)}") from None
    accounting = Accounting(TASKS, runs(broker.url, key))
    print(f"{name}: {accounting.summary()}, all done in {drained:.1f} s, "
          f"back to zero after {time.monotonic() - started:.1f} s")
    assert f"jobs@{deleted}" in hostnames(broker.url, key), "the deleted worker had run tasks"
    return accounting


def test_a_thousand_tasks_run_exactly_once_through_a_deleted_worker_and_a_killed_leader(
        two_nodes: DevCluster, tqs: TaskQueues, broker: RedisServer) -> None:
    accounting = run_through(two_nodes, tqs, broker, "early", env=[], stop_a_node=False)
    assert not accounting.missing and accounting.duplicated == 0, accounting.summary()
    denied = [r for r in ha.requests(two_nodes) if r.code == 403]
    assert not denied, f"the chart's RBAC denied: {denied}"


def test_with_late_ack_a_thousand_tasks_all_run_through_a_lost_node_too(
        two_nodes: DevCluster, tqs: TaskQueues, broker: RedisServer) -> None:
    """Runs after the test above: it stops one of the module's two nodes for good."""
    accounting = run_through(two_nodes, tqs, broker, "late", env=LATE_ACK_ENV, stop_a_node=True)
    assert not accounting.missing, accounting.summary()
    counted = Counter(accounting.runs)
    print(f"late: run twice: {sorted(n for n, times in counted.items() if times > 1)}")
    assert max(counted.values()) <= 2, f"a task ran more than twice: {counted.most_common(3)}"
