"""The managed broker keeps its queue through the routine restarts of a cluster's life, and says so.

A devcluster of its own with one node and an operator of the module's own (one test restarts it
with another default Redis image). 100 Celery messages wait in a default managed broker (the
example's `managed: {}`) on a queue no worker reads, and a producer pushes to another list every
20 ms throughout; then, one after the other: an edit of the broker's resources, a deleted broker
pod, redis-server SIGKILLed inside its container, and an operator-wide change of the default Redis
image. After each, every task id is still in the broker, once, so is every push the broker
acknowledged (a replacement pod must not start on the claim before the old Redis has exited), and
the TaskQueue's Event BrokerRestarted names the cause and counts the 100. An explicitly
ephemeral broker says in its Event that the queue started empty; a claim that cannot bind is named
in BrokerReady.
"""

from __future__ import annotations

import base64
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celery
import pytest
import redis

from devcluster import cluster, images
from tests.helpers import containers
from tests.helpers.devcluster import DevCluster, own_cluster
from tests.helpers.operator import OperatorProcess, apply_crds, start_operator
from tests.helpers.pushers import Pusher, missing
from tests.helpers.taskqueues import TaskQueues, taskqueue
from tests.helpers.waiting import ConditionNotMet, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

NAMESPACE = "durable"
READY_TIMEOUT = 180
# a new broker pod: the old one's SIGTERM (Redis fsyncs and exits), the claim moved to the new
# one, Redis replaying its append-only file, the operator's next pass (every second here)
RESTART_TIMEOUT = 120


@pytest.fixture(scope="module")
def day2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    with own_cluster(tmp_path_factory.mktemp("durable") / "cluster", nodes=1) as handle:
        apply_crds(handle)
        handle.kubectl("create", "namespace", NAMESPACE)
        yield handle


@pytest.fixture(scope="module")
def operator_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("operator") / "operator.log"


@pytest.fixture
def tqs(day2: DevCluster) -> Iterator[TaskQueues]:
    handle = TaskQueues(day2, NAMESPACE)
    yield handle
    handle.close()


def broker_url(tqs: TaskQueues, name: str) -> str:
    secret = tqs.core.read_namespaced_secret(f"{name}-broker", tqs.namespace)
    return base64.b64decode(secret.data["url"]).decode()


def send(url: str, count: int) -> list[str]:
    """`count` Celery task messages into queue `jobs`; their ids."""
    app = celery.Celery("producer", broker=url)
    ids = [f"durable-{n}" for n in range(count)]
    try:
        with app.producer_or_acquire() as producer:
            for task_id in ids:
                app.send_task("myproject.tasks.noop", task_id=task_id, queue="jobs", producer=producer)
    finally:
        app.close()
    return ids


def queued_ids(url: str) -> list[str]:
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        return [json.loads(raw)["headers"]["id"] for raw in client.lrange("jobs", 0, -1)]


def broker_status(tqs: TaskQueues, name: str) -> dict[str, Any]:
    return tqs.get(name).get("status", {}).get("broker") or {}


def restart_events(tqs: TaskQueues, name: str) -> list[Any]:
    return sorted((e for e in tqs.events(name) if e.reason == "BrokerRestarted"),
                  key=lambda e: e.last_timestamp or e.event_time)


def broker_pod(tqs: TaskQueues, name: str) -> Any:
    pods = [p for p in tqs.core.list_namespaced_pod(
        tqs.namespace, label_selector=f"app.kubernetes.io/instance={name},app.kubernetes.io/component=broker").items
        if p.metadata.deletion_timestamp is None and p.status.phase == "Running"]
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def await_restart(tqs: TaskQueues, name: str, run_before: str, told_before: int, operator: OperatorProcess) -> Any:
    """The next BrokerRestarted Event, once status.broker records a new run of redis-server."""
    def told() -> Any:
        record = broker_status(tqs, name)
        events = restart_events(tqs, name)
        if record.get("runId") in (None, run_before) or len(events) <= told_before:
            return None
        return events[-1]

    try:
        return wait_for(told, RESTART_TIMEOUT, "a new run of the broker, recorded and told")
    except ConditionNotMet as timeout:
        pods = tqs.cluster.kubectl("get", "pods,pvc", "-n", tqs.namespace, "-o", "wide", check=False).stdout
        raise AssertionError(f"{timeout}\nstatus.broker: {broker_status(tqs, name)}\n{pods}\n"
                             f"{operator.log_text()[-3000:]}") from None


def test_a_default_managed_broker_keeps_every_message_through_four_kinds_of_restart(
        day2: DevCluster, tqs: TaskQueues, operator_log: Path) -> None:
    operator = start_operator(day2, operator_log)
    try:
        tqs.apply(taskqueue("shop", broker={"managed": {}}, queues=[{"name": "jobs", "replicas": 0}]))
        tqs.wait_condition("shop", "BrokerReady", "True", timeout=READY_TIMEOUT)
        claim = tqs.core.read_namespaced_persistent_volume_claim("shop-broker", tqs.namespace)
        assert (claim.status.phase, claim.spec.resources.requests["storage"]) == ("Bound", "1Gi")
        url = broker_url(tqs, "shop")
        sent = send(url, 100)
        assert sorted(queued_ids(url)) == sorted(sent)
        assert claim.spec.access_modes == ["ReadWriteOncePod"]
        wait_for(lambda: broker_status(tqs, "shop").get("runId"), 30, "the broker's first run recorded")
        pusher = Pusher(url, "pushes")

        def restart(how: str, expected_cause: str, act: Any) -> None:
            nonlocal operator
            run, told = broker_status(tqs, "shop")["runId"], len(restart_events(tqs, "shop"))
            operator = act() or operator
            event = await_restart(tqs, "shop", run, told, operator)
            queued = queued_ids(url)
            acknowledged, held = pusher.held(url)
            lost_pushes = missing(acknowledged, held)
            print(f"\n{how}: {event.message}; {len(acknowledged)} pushes acknowledged, {len(lost_pushes)} lost")
            assert not lost_pushes, f"{how}: acknowledged pushes lost: {lost_pushes}"
            assert (len(queued), set(queued)) == (len(sent), set(sent)), (
                f"{how}: {len(set(sent) - set(queued))} lost, {len(queued) - len(set(queued))} duplicated")
            assert event.type == "Normal" and expected_cause in event.message, event.message
            assert "it replayed its append-only file: its queues hold 100 message(s) now" in event.message
            last = broker_status(tqs, "shop")["lastRestart"]
            assert (last["messages"], last["appendOnly"]) == (100, True)

        def edit_resources() -> None:
            tqs.patch_spec("shop", {"broker": {"managed": {"resources": {
                "requests": {"cpu": "60m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}}}})

        def delete_pod() -> None:
            tqs.core.delete_namespaced_pod(broker_pod(tqs, "shop").metadata.name, tqs.namespace)

        def kill_redis() -> None:
            pod = broker_pod(tqs, "shop")
            os.kill(containers.host_pid(pod.status.container_statuses[0].container_id), signal.SIGKILL)

        def new_default_image() -> OperatorProcess:
            reference = images.build_images(["redis"])["redis"].reference
            renamed = reference.rsplit(":", 1)[0] + ":day2-next"
            cluster.tag_image(day2.handle, reference, renamed)
            operator.stop()
            return start_operator(day2, operator_log.with_name("operator-next.log"),
                                  extra_env={"CELERY_OPERATOR_REDIS_IMAGE": renamed})

        restart("an edit of broker.managed.resources", "the broker runs in a new pod", edit_resources)
        restart("a deleted broker pod", "the broker runs in a new pod", delete_pod)
        restart("redis-server SIGKILLed in its container", "exit code 137) and the kubelet restarted it", kill_redis)
        restart("a new operator-wide default Redis image", "the broker runs in a new pod", new_default_image)
        assert broker_pod(tqs, "shop").spec.containers[0].image.endswith(":day2-next")
        tqs.wait_condition("shop", "Ready", "True", timeout=60)
        pusher.stop()
    finally:
        operator.stop()


@pytest.fixture
def operator(day2: DevCluster, operator_log: Path) -> Iterator[OperatorProcess]:
    running = start_operator(day2, operator_log.with_name(f"operator-{os.urandom(3).hex()}.log"))
    yield running
    running.stop()


def test_an_ephemeral_broker_that_restarts_says_the_queue_started_empty(
        tqs: TaskQueues, operator: OperatorProcess) -> None:
    tqs.apply(taskqueue("scratch", broker={"managed": {"persistence": {"enabled": False}}},
                        queues=[{"name": "jobs", "replicas": 0}]))
    tqs.wait_condition("scratch", "BrokerReady", "True", timeout=READY_TIMEOUT)
    assert not tqs.core.list_namespaced_persistent_volume_claim(
        tqs.namespace, label_selector="app.kubernetes.io/instance=scratch").items, "no claim: an emptyDir"
    url = broker_url(tqs, "scratch")
    send(url, 10)
    run = wait_for(lambda: broker_status(tqs, "scratch").get("runId"), 30, "the broker's first run recorded")
    tqs.core.delete_namespaced_pod(broker_pod(tqs, "scratch").metadata.name, tqs.namespace)
    event = await_restart(tqs, "scratch", run, 0, operator)
    assert event.type == "Warning", event.message
    assert "the queue started empty: every message it held before the restart is lost" in event.message
    assert "spec.broker.managed.persistence.enabled is false" in event.message
    assert queued_ids(url) == [], "what an ephemeral broker costs: the 10 messages are gone"


def test_a_broker_claim_that_cannot_bind_is_named_in_broker_ready(
        tqs: TaskQueues, operator: OperatorProcess) -> None:
    tqs.apply(taskqueue("nodisk", broker={"managed": {"persistence": {"storageClassName": "no-such-class"}}},
                        queues=[{"name": "jobs", "replicas": 0}]))
    condition = tqs.wait_condition("nodisk", "BrokerReady", "False", "BrokerVolumePending", timeout=30)
    assert "PersistentVolumeClaim nodisk-broker cannot bind" in condition["message"]
    assert '"no-such-class" not found' in condition["message"]
    # posted right after the status write the wait above saw
    warnings = wait_for(lambda: [e for e in tqs.events("nodisk") if e.type == "Warning"], 10, "the Warning Event")
    assert [e.reason for e in warnings] == ["BrokerVolumePending"], "one Event"


def test_a_broker_claim_without_a_default_storage_class_is_named_in_broker_ready(
        day2: DevCluster, tqs: TaskQueues, operator: OperatorProcess) -> None:
    classes = json.loads(day2.kubectl("get", "storageclass", "-o", "json").stdout)["items"]
    key = "storageclass.kubernetes.io/is-default-class"
    [default] = [c["metadata"]["name"] for c in classes if c["metadata"].get("annotations", {}).get(key) == "true"]
    day2.kubectl("annotate", "storageclass", default, f"{key}=false", "--overwrite")
    try:
        tqs.apply(taskqueue("noclass", queues=[{"name": "jobs", "replicas": 0}]))
        condition = tqs.wait_condition("noclass", "BrokerReady", "False", "BrokerVolumePending", timeout=30)
        assert "PersistentVolumeClaim noclass-broker cannot bind" in condition["message"]
        assert "no storage class is set" in condition["message"], condition["message"]
    finally:
        day2.kubectl("annotate", "storageclass", default, f"{key}=true", "--overwrite")
