"""A TaskQueue's NetworkPolicies on real nodes, enforced by the devcluster's kube-router: its managed
broker lets in its own pods, labelled producers and the operator, and nobody else; its workers
still run tasks, its autoscaler still reads the broker, its beat still sends a PeriodicJob's runs
and passes its liveness probe; with spec.networkPolicy.enabled false the policies go.

The session's operator runs on the host: the policies let the node network in for it
(CELERY_OPERATOR_SOURCE_CIDRS, tests/helpers/operator.py), which is also how this test reads the
broker from the host."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import celery
import kubernetes
import pytest

from tests.helpers.devcluster import DevCluster
from tests.helpers.operator import OperatorProcess
from tests.helpers.periodicjobs import PeriodicJobs, periodicjob, recorded
from tests.helpers.taskqueues import SAMPLE_APP_IMAGE, TaskQueues, taskqueue
from tests.helpers.waiting import holds_for, wait_for

pytestmark = pytest.mark.e2e

NAME = "guarded"
PRODUCER_LABEL = "celery-operator.dev/producer"
# a connection the policy drops never completes: this long is "cannot connect"
CONNECT_TIMEOUT = 3
PING = ("import os, redis; redis.Redis.from_url(os.environ['BROKER'], socket_connect_timeout=%d, "
        "socket_timeout=%d).ping()" % (CONNECT_TIMEOUT, CONNECT_TIMEOUT))


@pytest.fixture
def pjs(devcluster: DevCluster, namespace: str, operator: OperatorProcess) -> Iterator[PeriodicJobs]:
    handle = PeriodicJobs(devcluster, namespace)
    yield handle
    handle.close()


def client_pod(name: str, labels: dict[str, str]) -> dict:
    """A pod of the sample app's image with the broker URL from the TaskQueue's Secret, idle."""
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "main", "image": SAMPLE_APP_IMAGE, "imagePullPolicy": "IfNotPresent",
            "command": ["python", "-c", "import time; time.sleep(3600)"],
            "env": [{"name": "BROKER", "valueFrom": {"secretKeyRef": {"name": f"{NAME}-broker", "key": "url"}}}],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        }]},
    }


def reaches_broker(devcluster: DevCluster, namespace: str, pod: str) -> bool:
    result = devcluster.kubectl("exec", "-n", namespace, pod, "--", "python", "-c", PING, check=False, timeout=30)
    return result.returncode == 0


def running(tqs: TaskQueues, name: str) -> bool:
    found = tqs.core.read_namespaced_pod(name, tqs.namespace)
    return found.status.phase == "Running"


def policy_names(tqs: TaskQueues) -> set[str]:
    listed = kubernetes.client.NetworkingV1Api(tqs.api_client).list_namespaced_network_policy(tqs.namespace)
    return {item.metadata.name for item in listed.items}


def broker_url(tqs: TaskQueues) -> str:
    secret = tqs.core.read_namespaced_secret(f"{NAME}-broker", tqs.namespace)
    return base64.b64decode(secret.data["url"]).decode()


def test_only_its_pods_producers_and_the_operator_reach_the_managed_broker(
        devcluster: DevCluster, tqs: TaskQueues, pjs: PeriodicJobs, namespace: str) -> None:
    tqs.apply(taskqueue(NAME, queues=[{"name": "jobs", "replicas": 1, "concurrency": 1},
                                      {"name": "burst", "autoscaling": {"maxReplicas": 2}}]))
    # BrokerReady: the operator (on the host, let in by its source CIDRs) reads the broker
    tqs.wait_condition(NAME, "Ready", "True", timeout=180)
    assert policy_names(tqs) == {f"{NAME}-broker", f"{NAME}-workers"}
    url = broker_url(tqs)

    for name, labels in (("producer", {PRODUCER_LABEL: NAME}), ("stranger", {})):
        devcluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(client_pod(name, labels)))
    for name in ("producer", "stranger"):
        wait_for(lambda: running(tqs, name), 90, f"pod {name} to run")
    # the engine adds a new pod's address to the policy's sets within seconds
    wait_for(lambda: reaches_broker(devcluster, namespace, "producer"), 60, "the labelled producer to reach the broker")
    holds_for(lambda: not reaches_broker(devcluster, namespace, "stranger"), 10,
              "a pod without the producer label kept out of the broker")

    # the producer sends a task as a web app would; the TaskQueue's own worker runs it
    send = ("import os, celery; celery.Celery(broker=os.environ['BROKER']).send_task("
            "'myapp.tasks.record', args=['np-runs', 'from-producer'], queue='jobs')")
    devcluster.kubectl("exec", "-n", namespace, "producer", "--", "python", "-c", send, timeout=60)
    [entry] = wait_for(lambda: recorded(url, "np-runs"), 90, "the worker to run the producer's task")
    assert entry["value"] == "from-producer"

    # autoscaling: the operator reads the depth of `burst` through the broker and scales it from zero
    producer = celery.Celery(broker=url)
    for index in range(3):
        producer.send_task("myapp.tasks.record", args=["np-burst", index], queue="burst")
    wait_for(lambda: len(recorded(url, "np-burst")) == 3, 120, "the burst queue to scale up and run its tasks")

    # the beat reaches the broker as one of the TaskQueue's pods, and its liveness probe (from
    # the node) passes: once it sends, it is not restarted (three failed probes 5 s apart would)
    pjs.apply(periodicjob("tick", NAME, "np-ticks", interval="2s"))
    wait_for(lambda: len(recorded(url, "np-ticks")) >= 2, 120, "the beat's runs to be executed")
    assert f"{NAME}-beat" in policy_names(tqs)
    [beat] = tqs.core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/instance={NAME},"
                                                                    "app.kubernetes.io/component=beat").items

    def beat_restarts() -> int:
        return tqs.core.read_namespaced_pod(beat.metadata.name, namespace).status.container_statuses[0].restart_count

    sending = beat_restarts()
    holds_for(lambda: beat_restarts() == sending, 25, "the sending beat running without a liveness restart")

    # turned off, the policies go and the stranger gets in
    tqs.patch_spec(NAME, {"networkPolicy": {"enabled": False}})
    wait_for(lambda: not policy_names(tqs), 30, "the policies to be deleted")
    wait_for(lambda: reaches_broker(devcluster, namespace, "stranger"), 60, "the stranger to reach the broker")
