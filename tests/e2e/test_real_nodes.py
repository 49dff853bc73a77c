"""What a user's cluster does with our pods, on real kubelets: Pod Security `restricted`, the
images' own users and read-only root filesystems, volumes that keep a broker's queue, pod
failures reported on the TaskQueue, two clusters side by side and a node that is lost."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from devcluster import cluster
from tests.helpers.devcluster import DevCluster, own_cluster
from tests.helpers.operator import OperatorProcess, apply_crds, start_operator
from tests.helpers.processes import RedisServer
from tests.helpers.taskqueues import TaskQueues, taskqueue
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "app" / "examples"
READY_TIMEOUT = 180


def running_pods(tqs: TaskQueues, name: str) -> list[Any]:
    selector = f"app.kubernetes.io/instance={name}"
    pods = tqs.core.list_namespaced_pod(tqs.namespace, label_selector=selector).items
    # a pod of a lost node stays Running, with a deletionTimestamp, until its kubelet confirms
    return [p for p in pods if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]


def exec_in(cluster_handle: DevCluster, namespace: str, pod: str, container: str, script: str) -> Any:
    return cluster_handle.kubectl("exec", "-n", namespace, pod, "-c", container, "--", "sh", "-c", script,
                                  check=False)


def apply_examples(cluster_handle: DevCluster, namespace: str) -> None:
    cluster_handle.kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))


@pytest.fixture
def restricted_namespace(devcluster: DevCluster, namespace: str) -> str:
    devcluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted",
                       "pod-security.kubernetes.io/enforce-version=latest")
    return namespace


def test_examples_run_under_pod_security_restricted_as_their_images_users(
        devcluster: DevCluster, restricted_namespace: str, operator: OperatorProcess) -> None:
    tqs = TaskQueues(devcluster, restricted_namespace)
    apply_examples(devcluster, restricted_namespace)
    tqs.wait_condition("shop", "Ready", "True", timeout=READY_TIMEOUT)
    # broker, the always-on worker and the beat of the example's PeriodicJob
    pods = wait_for(lambda: (found := running_pods(tqs, "shop")) and len(found) >= 3 and found, READY_TIMEOUT,
                    "broker, worker and beat pods running")
    components = {p.metadata.labels["app.kubernetes.io/component"] for p in pods}
    assert {"broker", "worker", "beat"} <= components
    for pod in pods:
        for container in pod.spec.containers:
            result = exec_in(devcluster, restricted_namespace, pod.metadata.name, container.name,
                             "id -u; touch /var/tmp/probe-root-write")
            uid = result.stdout.strip().splitlines()[0]
            assert uid != "0", f"{pod.metadata.name}/{container.name} runs as root"
            assert "Read-only file system" in result.stderr, (
                f"{pod.metadata.name}/{container.name} can write its root filesystem: {result.stderr}")


def _broker_client(tqs: TaskQueues, name: str) -> redis.Redis:
    secret = tqs.core.read_namespaced_secret(f"{name}-broker", tqs.namespace)
    return redis.Redis.from_url(base64.b64decode(secret.data["url"]).decode(), socket_timeout=5)


def test_a_persistent_managed_broker_keeps_its_queue_across_a_deleted_pod(tqs: TaskQueues) -> None:
    tqs.apply(taskqueue("keep", queues=[{"name": "jobs", "replicas": 0}],
                        broker={"managed": {"persistence": {"size": "64Mi"}}}))
    tqs.wait_condition("keep", "BrokerReady", "True", timeout=READY_TIMEOUT)
    claim = tqs.core.read_namespaced_persistent_volume_claim("keep-broker", tqs.namespace)
    assert claim.status.phase == "Bound"
    with _broker_client(tqs, "keep") as client:
        client.rpush("jobs", *[f"message-{n}" for n in range(25)])
    old = running_pods(tqs, "keep")
    assert len(old) == 1
    tqs.core.delete_namespaced_pod(old[0].metadata.name, tqs.namespace)

    def new_broker_answers() -> int | None:
        pods = running_pods(tqs, "keep")
        if not pods or pods[0].metadata.name == old[0].metadata.name:
            return None
        with _broker_client(tqs, "keep") as client:
            return client.llen("jobs") or None

    assert wait_for(new_broker_answers, READY_TIMEOUT, "a new broker pod with the queue") == 25


def test_a_worker_image_that_does_not_exist_is_reported_and_heals(tqs: TaskQueues, redis_server: RedisServer) -> None:
    good = taskqueue("img", queues=[{"name": "q", "replicas": 1}], broker={"url": redis_server.url})
    bad = json.loads(json.dumps(good))
    bad["spec"]["image"] = "devcluster.local/no-such-image:1"
    tqs.apply(bad)
    condition = tqs.wait_condition("img", "WorkersReady", "False", timeout=READY_TIMEOUT)

    def names_the_cause() -> dict | None:
        found = tqs.condition("img", "WorkersReady")
        message = found["message"] if found else ""
        return found if "img-worker-q" in message and ("ErrImagePull" in message or "ImagePullBackOff" in message) else None

    condition = wait_for(names_the_cause, READY_TIMEOUT, "WorkersReady to name the Deployment and the kubelet's reason")
    assert condition["status"] == "False"
    warnings = wait_for(lambda: [e for e in tqs.events("img") if e.type == "Warning" and "img-worker-q" in e.message],
                        30, "a Warning event naming the Deployment")
    assert warnings
    tqs.apply(good)
    tqs.wait_condition("img", "WorkersReady", "True", timeout=READY_TIMEOUT)
    tqs.wait_condition("img", "Ready", "True", timeout=60)


@pytest.fixture
def second_cluster(tmp_path: Path) -> Iterator[DevCluster]:
    """A cluster of two nodes beside the session's, with an operator of its own."""
    with own_cluster(tmp_path / "second", nodes=2) as handle:
        yield handle


def test_two_clusters_side_by_side_each_reach_their_own_broker_and_survive_a_lost_node(
        devcluster: DevCluster, second_cluster: DevCluster, operator: OperatorProcess, tmp_path: Path) -> None:
    for handle in (devcluster, second_cluster):
        handle.kubectl("create", "namespace", "demo", check=False)
    apply_crds(second_cluster)
    second_operator = start_operator(second_cluster, tmp_path / "second-operator.log")
    try:
        first, second = TaskQueues(devcluster, "demo"), TaskQueues(second_cluster, "demo")
        for handle in (devcluster, second_cluster):
            apply_examples(handle, "demo")
        # the example's durable broker keeps its queue on a volume of its node (local-path here), which
        # cannot follow it to another node: a lost node's broker waits for the node (the durability
        # tests' subject); this test moves every pod, so its brokers keep their queues in memory
        for handle in (first, second):
            handle.patch_spec("shop", {"broker": {"managed": {"persistence": {"enabled": False}}}})
        # the same names in both clusters (shop-broker.demo.svc): each operator reaches its own
        for handle in (first, second):
            handle.wait_condition("shop", "Ready", "True", timeout=READY_TIMEOUT)
        secrets = [base64.b64decode(h.core.read_namespaced_secret("shop-broker", "demo").data["password"])
                   for h in (first, second)]
        assert secrets[0] != secrets[1]

        # the node that runs the second cluster's broker is lost: everything comes back on the other
        broker = running_pods(second, "shop")
        lost = next(p.spec.node_name for p in broker if p.metadata.labels["app.kubernetes.io/component"] == "broker")
        index = second_cluster.node_names.index(lost) + 1
        cluster.stop_node(second_cluster.dir, index)
        second.wait_condition("shop", "Ready", "False", timeout=READY_TIMEOUT)

        def all_back_elsewhere() -> bool:
            pods = running_pods(second, "shop")
            return len(pods) >= 3 and all(p.spec.node_name != lost for p in pods)

        wait_for(all_back_elsewhere, READY_TIMEOUT, "the pods to run on the remaining node")
        try:
            second.wait_condition("shop", "Ready", "True", timeout=READY_TIMEOUT)
        except AssertionError as timeout:
            conditions = second.get("shop").get("status", {}).get("conditions")
            pods = second_cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
            raise AssertionError(f"{timeout}\nconditions: {conditions}\npods:\n{pods}") from None
    finally:
        second_operator.stop()
        devcluster.kubectl("delete", "namespace", "demo", "--wait=false", check=False)
