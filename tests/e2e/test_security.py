"""Safe defaults on real nodes: Flower asks for a login (the generated one, then the user's), and a
managed broker filled to its maxmemory refuses new messages without losing or restarting anything,
says so on the TaskQueue, and takes messages again once it is below maxmemory."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from typing import Any

import celery
import pytest
import redis

from tests.helpers.devcluster import DevCluster
from tests.helpers.processes import RedisServer
from tests.helpers.taskqueues import TaskQueues, taskqueue
from tests.helpers.waiting import ConditionNotMet, wait_for

pytestmark = pytest.mark.e2e

READY_TIMEOUT = 180


def _secret(tqs: TaskQueues, name: str) -> dict[str, str]:
    data = tqs.core.read_namespaced_secret(name, tqs.namespace).data
    return {key: base64.b64decode(value).decode() for key, value in data.items()}


def _status_of(url: str, login: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if login is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(login).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _ready_flower_pod(tqs: TaskQueues, name: str, not_named: str | None = None) -> Any:
    """The one Ready Flower pod of the current template (not `not_named`), once the rollout is done."""
    def ready() -> Any:
        deployment = tqs.deployment(f"{name}-flower")
        if not deployment or deployment.status.observed_generation != deployment.metadata.generation or (
                deployment.status.updated_replicas or 0) != 1 or (deployment.status.replicas or 0) != 1:
            return None
        pods = [p for p in tqs.core.list_namespaced_pod(
            tqs.namespace, label_selector=f"app.kubernetes.io/instance={name},app.kubernetes.io/component=flower").items
            if p.metadata.deletion_timestamp is None and p.metadata.name != not_named
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
        return pods[0] if len(pods) == 1 else None

    return wait_for(ready, READY_TIMEOUT, f"{name}-flower to roll out")


def test_flower_refuses_requests_without_a_login_and_answers_with_one(devcluster: DevCluster, tqs: TaskQueues,
                                                                       redis_server: RedisServer) -> None:
    flower = {"enabled": True,
              # persistent mode writes Flower's state file: it must work on the read-only root filesystem
              "env": [{"name": "FLOWER_PERSISTENT", "value": "true"}],
              # this test reaches Flower from the host, not from a pod of the namespace
              "allowFrom": [{"ipBlock": {"cidr": devcluster.node_network}}]}
    tqs.apply(taskqueue("guarded", broker={"url": redis_server.url}, flower=flower))
    pod = _ready_flower_pod(tqs, "guarded")
    assert pod.spec.automount_service_account_token is False
    assert not any(v.projected for v in pod.spec.volumes or []), "no API token mounted"
    assert pod.spec.containers[0].security_context.read_only_root_filesystem is True
    base = f"http://{pod.status.pod_ip}:5555"

    generated = _secret(tqs, "guarded-flower")
    assert generated["auth"] == f"{generated['username']}:{generated['password']}"
    assert _status_of(f"{base}/") == 401, "no login: refused"
    assert _status_of(f"{base}/api/workers") == 401
    assert _status_of(f"{base}/", (generated["username"], "wrong")) == 401
    assert _status_of(f"{base}/", (generated["username"], generated["password"])) == 200
    assert _status_of(f"{base}/healthcheck") == 200, "the readiness probe needs no login"

    tqs.core.create_namespaced_secret(tqs.namespace, {"metadata": {"name": "flower-logins"},
                                                      "stringData": {"users": "alice:pw-one,bob:pw-two"}})
    flower["basicAuthSecretRef"] = {"name": "flower-logins", "key": "users"}
    tqs.apply(taskqueue("guarded", broker={"url": redis_server.url}, flower=flower))
    pod = _ready_flower_pod(tqs, "guarded", not_named=pod.metadata.name)
    base = f"http://{pod.status.pod_ip}:5555"
    assert _status_of(f"{base}/") == 401
    assert _status_of(f"{base}/", ("alice", "pw-one")) == 200
    assert _status_of(f"{base}/", ("bob", "pw-two")) == 200
    assert _status_of(f"{base}/", (generated["username"], generated["password"])) == 401, "the old login is gone"
    wait_for(lambda: tqs.core.list_namespaced_secret(
        tqs.namespace, field_selector="metadata.name=guarded-flower").items == [], 30,
        "the generated login's Secret to go")


PAYLOAD = "x" * 16384


def _send(producer: celery.Celery) -> None:
    producer.send_task("myapp.tasks.process_regular_data", args=[PAYLOAD], queue="jobs", retry=False)


def _send_until_refused(producer: celery.Celery, limit: int) -> tuple[Exception, int]:
    """The error of the first message refused, and how many were taken before it."""
    for taken in range(limit):
        try:
            _send(producer)
        except Exception as error:  # noqa: BLE001 - which error the producer gets is what is checked
            return error, taken
    raise AssertionError(f"{limit} more messages of 16 KiB fitted in a maxmemory of 4Mi")


def _worker_logs(tqs: TaskQueues, name: str) -> str:
    """The end of what each worker container of TaskQueue `name` printed (the one before a restart too)."""
    told = []
    for pod in tqs.core.list_namespaced_pod(tqs.namespace, label_selector=(
            f"app.kubernetes.io/instance={name},app.kubernetes.io/component=worker")).items:
        for previous in (True, False):
            try:
                text = tqs.core.read_namespaced_pod_log(pod.metadata.name, tqs.namespace, container="worker",
                                                        previous=previous, tail_lines=30)
            except Exception as error:  # noqa: BLE001 - a diagnosis, never the failure itself
                text = repr(error)
            told.append(f"--- {pod.metadata.name}{' (previous)' if previous else ''}:\n{text}")
    return "\n".join(told)


def _broker_pod(tqs: TaskQueues, name: str) -> Any:
    [pod] = [p for p in tqs.core.list_namespaced_pod(
        tqs.namespace, label_selector=f"app.kubernetes.io/instance={name},app.kubernetes.io/component=broker").items
        if p.metadata.deletion_timestamp is None]
    return pod


def test_a_full_managed_broker_refuses_new_messages_keeps_the_rest_and_recovers(tqs: TaskQueues) -> None:
    def body(replicas: int) -> dict[str, Any]:
        # a small maxmemory fills in a second; results stay in the worker (no credentials, no broker writes)
        return taskqueue("tight", queues=[{"name": "jobs", "replicas": replicas}],
                         resultBackend={"url": "cache+memory://"},
                         broker={"managed": {"maxMemory": "4Mi", "resources": {
                             "requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}}})

    tqs.apply(body(replicas=0))
    tqs.wait_condition("tight", "BrokerAcceptingWrites", "True", "BelowMaxMemory", timeout=READY_TIMEOUT)
    before = _broker_pod(tqs, "tight")
    assert "--maxmemory" in before.spec.containers[0].args
    url = _secret(tqs, "tight-broker")["url"]
    producer = celery.Celery("producer", broker=url, set_as_current=False)
    client = redis.Redis.from_url(url, socket_timeout=5)

    refusal, _ = _send_until_refused(producer, 2000)
    assert "used memory > 'maxmemory'" in str(refusal), f"the producer is told why: {refusal!r}"
    held = client.llen("jobs")
    assert held > 50

    full = tqs.wait_condition("tight", "BrokerAcceptingWrites", "False", "BrokerFull", timeout=30)
    assert "maxmemory of 4194304 bytes" in full["message"]
    assert tqs.condition("tight", "BrokerReady")["status"] == "True", "a full broker still answers"
    assert (tqs.condition("tight", "Ready")["status"], tqs.condition("tight", "Ready")["reason"]) == (
        "False", "BrokerFull")
    wait_for(lambda: [e for e in tqs.events("tight") if e.type == "Warning" and e.reason == "BrokerFull"], 30,
             "a Warning Event BrokerFull")
    # Redis refused a message while holding the memory of its request: freed, that may take one or
    # two more before it refuses again. Nothing held is lost either way.
    again, taken = _send_until_refused(producer, 20)
    assert "used memory > 'maxmemory'" in str(again)
    assert client.llen("jobs") == held + taken, "nothing lost"
    held += taken
    now = _broker_pod(tqs, "tight")
    assert now.metadata.uid == before.metadata.uid, "the same broker pod"
    assert now.status.container_statuses[0].restart_count == 0, "never OOM-killed"

    # Celery's workers cannot drain a Redis at its maxmemory: kombu's MULTI/EXEC pipelines are refused
    # there (a worker exits with "Unrecoverable error: OutOfMemoryError"), so the way out is the
    # user's: take messages off (or give Redis more memory). Here half of the queue is dropped: the
    # worker's first pipelines need room, and a durable broker (the default) keeps part of its small
    # maxmemory for its append-only file's buffers (a quarter was not enough in a CI run).
    for _ in range(held // 2):
        client.rpop("jobs")
    tqs.wait_condition("tight", "BrokerAcceptingWrites", "True", "BelowMaxMemory", timeout=30)
    tqs.wait_condition("tight", "Ready", "True", timeout=60)
    _send(producer)  # accepted again
    tqs.apply(body(replicas=1))  # and a worker, started below maxmemory, consumes every message
    try:
        wait_for(lambda: client.llen("jobs") == 0, READY_TIMEOUT, "the worker to drain the queue")
    except ConditionNotMet as error:
        raise AssertionError(f"{error}; {client.llen('jobs')} left; {_worker_logs(tqs, 'tight')}") from error
    assert _broker_pod(tqs, "tight").status.container_statuses[0].restart_count == 0
    client.close()
