"""The API server restarts in the middle of a run, on real nodes with real workers of the sample app.

The session cluster's kube-apiserver process stops and stays away for DOWN_SECONDS, then starts again
with the same flags (devcluster.cluster.restart_apiserver), as in a control-plane upgrade. The
workers need only their broker and keep working; the operator (the session's process, no leader
election) must ride it out: same pid, never exited, its watches and timers back, so that scaling and
reconciling go on. restart_apiserver returns once /readyz answers: the tests after these share the
cluster, so each test here also waits for its node to be Ready again before it ends.

That wait is long on purpose. If the node's heartbeats stop for longer than the node monitor's 16 s
grace period, the controller manager marks it Ready=Unknown, and the kubelet lifts the mark only
once its own node informer has seen it: it patches its status as a diff against that informer's
copy, so a stale copy (still Ready=True) yields a patch of heartbeats alone. client-go's reflectors
re-watch after a backoff that grows to [30, 60) s over repeated failures and resets only after two
quiet minutes. Restarting the API server of an idle devcluster twice two minutes apart left the node
Ready=Unknown, with fresh heartbeats and a renewed Lease, for 81 s after the second restart.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from pathlib import Path

import celery
import kubernetes
import pytest
import redis

from devcluster import cluster
from tests.helpers import operator_ha as ha
from tests.helpers.devcluster import DevCluster, own_cluster
from tests.helpers.operator import OperatorProcess
from tests.helpers.processes import RedisServer, start_redis
from tests.helpers.taskqueues import TaskQueues, taskqueue
from tests.helpers.waiting import ConditionNotMet, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

DOWN_SECONDS = 10
PAST_THE_RENEW_DEADLINE = 14  # seconds: the chart's leader cannot renew within its 10 s deadline
NODES_READY_AFTER_RESTART = 180  # seconds: a reflector's longest backoff twice over, and slack
QUEUE = "jobs"


def autoscaled(name: str, url: str) -> dict:
    return taskqueue(
        name, broker={"url": url}, resultBackend={"url": url},
        queues=[{"name": QUEUE, "autoscaling": {"maxReplicas": 3}, "terminationGracePeriodSeconds": 60}],
        autoscaling={"pollIntervalSeconds": 1, "scaleDownStabilizationSeconds": 4})


def send_records(url: str, key: str, count: int, seconds: float) -> list[str]:
    producer = celery.Celery(broker=url)
    with producer.connection_for_write() as connection:
        return [producer.send_task("myapp.tasks.record", args=[key, index, seconds], queue=QUEUE,
                                   connection=connection).id for index in range(count)]


def recorded_ids(url: str, key: str) -> list[str]:
    with redis.Redis.from_url(url) as client:
        return [json.loads(item)["id"] for item in client.lrange(key, 0, -1)]


def wait_all_done(url: str, key: str, ids: list[str], timeout: float) -> None:
    """Every task id ran, each exactly once (early ack: a task never runs twice)."""
    wait_for(lambda: set(ids) <= set(recorded_ids(url, key)), timeout, f"all {len(ids)} tasks of {key}")
    runs = collections.Counter(recorded_ids(url, key))
    assert set(runs) == set(ids) and all(count == 1 for count in runs.values()), \
        {task_id: count for task_id, count in runs.items() if count != 1}


def replicas(tqs: TaskQueues, name: str) -> int:
    return tqs.deployment(f"{name}-worker-{QUEUE}").spec.replicas


def worker_concurrency(tqs: TaskQueues, name: str) -> str:
    container = tqs.deployment(f"{name}-worker-{QUEUE}").spec.template.spec.containers[0]
    command = [*(container.command or []), *(container.args or [])]
    return command[command.index("--concurrency") + 1]


def node_readiness(devcluster: DevCluster) -> dict[str, str]:
    """Each node's Ready condition as `status (reason, last heartbeat)`."""
    with devcluster.api_client() as client:
        listed = kubernetes.client.CoreV1Api(client).list_node().items
    readiness = {}
    for node in listed:
        ready = next((c for c in node.status.conditions or [] if c.type == "Ready"), None)
        readiness[node.metadata.name] = (f"{ready.status} ({ready.reason}, heartbeat {ready.last_heartbeat_time})"
                                         if ready else "no Ready condition")
    return readiness


def wait_nodes_ready(devcluster: DevCluster) -> None:
    readiness: dict[str, str] = {}

    def every_node_ready() -> bool:
        readiness.clear()
        readiness.update(node_readiness(devcluster))
        return bool(readiness) and all(state.startswith("True ") for state in readiness.values())

    try:
        wait_for(every_node_ready, NODES_READY_AFTER_RESTART, "every node Ready again after the restart")
    except ConditionNotMet as error:
        raise ConditionNotMet(f"{error}; last seen: {readiness}") from None


def restart_apiserver(devcluster: DevCluster) -> None:
    cluster.restart_apiserver(devcluster.dir, down_seconds=DOWN_SECONDS)
    wait_nodes_ready(devcluster)


def test_the_operator_rides_out_an_api_server_restart_and_scaling_resumes(
        devcluster: DevCluster, tqs: TaskQueues, redis_server: RedisServer, operator: OperatorProcess) -> None:
    url, name = redis_server.url, "restart"
    tqs.apply(autoscaled(name, url))
    tqs.wait_condition(name, "Ready", "True", timeout=120)
    tqs.wait_condition(name, "Autoscaling", "True")
    pid = operator.process.pid

    first = send_records(url, "first-runs", 40, seconds=2)
    wait_for(lambda: replicas(tqs, name) >= 2, 60, "a scale-up")
    wait_for(lambda: len(recorded_ids(url, "first-runs")) >= 2, 120, "the workers to be busy")
    restart_apiserver(devcluster)

    assert operator.process.poll() is None and operator.process.pid == pid, "the operator never exited"
    wait_for(operator.healthy, 30, "the operator's health endpoint")
    wait_all_done(url, "first-runs", first, 180)
    wait_for(lambda: replicas(tqs, name) == 0, 90, "the scale-down to zero after the restart")

    # the watch is back: a spec change made after the restart is reconciled
    tqs.patch_spec(name, {"workers": {"concurrency": 3}})
    wait_for(lambda: worker_concurrency(tqs, name) == "3", 60, "the worker Deployment at concurrency 3")
    tqs.wait_condition(name, "Ready", "True", timeout=60)

    second = send_records(url, "second-runs", 24, seconds=1)
    wait_for(lambda: replicas(tqs, name) >= 2, 60, "a scale-up after the restart")
    wait_all_done(url, "second-runs", second, 180)
    wait_for(lambda: replicas(tqs, name) == 0, 90, "the return to zero")
    assert operator.process.poll() is None and operator.process.pid == pid


def test_while_the_api_server_is_away_the_operator_logs_retries_not_a_crash(
        devcluster: DevCluster, tqs: TaskQueues, redis_server: RedisServer, operator: OperatorProcess) -> None:
    """What the operator's status says while the API server is away cannot be read; its log can."""
    url, name = redis_server.url, "retries"
    tqs.apply(autoscaled(name, url))
    tqs.wait_condition(name, "Autoscaling", "True", timeout=120)
    before = len(operator.log_text())
    restart_apiserver(devcluster)
    wait_for(operator.healthy, 30, "the operator's health endpoint")

    # the first reconcile after the restart: the operator watches and writes again
    tqs.patch_spec(name, {"workers": {"concurrency": 3}})
    wait_for(lambda: worker_concurrency(tqs, name) == "3", 60, "the spec change to be reconciled")
    during = operator.log_text()[before:]
    print(during[-6000:])
    assert operator.process.poll() is None
    assert "will retry" in during, "the operator retries its requests to the API server"
    assert "escalating" not in during and "Traceback" not in during, during[-4000:]


@pytest.fixture
def chart_cluster(tmp_path: Path) -> Iterator[DevCluster]:
    with own_cluster(tmp_path / "cluster", nodes=1) as handle:
        ha.install(handle)
        handle.kubectl("create", "namespace", "shop")
        yield handle


def restarts(devcluster: DevCluster) -> dict[str, int]:
    return {name: sum(status["restartCount"] for status in pod["status"].get("containerStatuses", []))
            for name, pod in ha.operator_pods(devcluster).items()}


def last_terminations(devcluster: DevCluster) -> dict[str, object]:
    """Why each operator container last stopped (the kubelet's reason and exit code), for a failure."""
    return {name: [status.get("lastState", {}).get("terminated")
                   for status in pod["status"].get("containerStatuses", [])]
            for name, pod in ha.operator_pods(devcluster).items()}


def test_the_charts_elected_leader_holds_its_writes_through_the_restart_and_carries_on(
        chart_cluster: DevCluster, tmp_path: Path) -> None:
    """The chart's two replicas: the API server is away longer than the leader's renew deadline, so
    the leader cannot renew in time. It holds its writes rather than exiting, renews its Lease when
    the API server answers (the standby does not count the outage towards the Lease's expiry), and
    acts on: no operator pod restarts, the same replica leads."""
    devcluster, name = chart_cluster, "elected"
    broker = start_redis(tmp_path / "redis", host=devcluster.host_ip)
    tqs = TaskQueues(devcluster, "shop")
    try:
        wait_for(lambda: ha.holder(devcluster) in ha.operator_pods(devcluster), 120, "a leader")
        leader, before = ha.holder(devcluster), restarts(devcluster)
        tqs.apply(autoscaled(name, broker.url))
        tqs.wait_condition(name, "Autoscaling", "True", timeout=120)
        first = send_records(broker.url, "first-runs", 40, seconds=2)
        wait_for(lambda: replicas(tqs, name) >= 2, 60, "a scale-up")
        cluster.restart_apiserver(devcluster.dir, down_seconds=PAST_THE_RENEW_DEADLINE)
        wait_nodes_ready(devcluster)
        wait_all_done(broker.url, "first-runs", first, 180)
        wait_for(lambda: replicas(tqs, name) == 0, 90, "the scale-down to zero after the restart")
        tqs.patch_spec(name, {"workers": {"concurrency": 3}})
        wait_for(lambda: worker_concurrency(tqs, name) == "3", 60, "a spec change reconciled after the restart")
        assert ha.holder(devcluster) == leader, "the same replica leads"
        assert restarts(devcluster) == before, (f"an operator pod restarted: {restarts(devcluster)} (was {before}); "
                                                f"{last_terminations(devcluster)}")
        log = ha.pod_log(devcluster, leader)
        assert "every write held" in log and "writes resume" in log, log[-4000:]
    finally:
        tqs.close()
        broker.stop()

