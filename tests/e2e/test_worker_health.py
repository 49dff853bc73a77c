"""Workers Kubernetes understands, on real kubelets with real Celery workers of the sample app: a
pod is Ready once its worker consumes (the readiness gate the operator sets from heartbeats), a
frozen worker is found and replaced with nothing lost, and an OOM-killed worker is reported with
the kubelet's reason and the task it was running."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import celery
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import containers
from tests.helpers.brokers import RabbitBroker
from tests.helpers.operator import OperatorProcess
from tests.helpers.processes import RedisServer
from tests.helpers.taskqueues import TaskQueues, taskqueue
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.e2e

GATE = "celery-operator.dev/consuming"
READY_TIMEOUT = 180


def pods_of(tqs: TaskQueues, name: str, queue: str = "jobs") -> list[Any]:
    selector = f"app.kubernetes.io/instance={name},celery-operator.dev/queue={queue}"
    return [pod for pod in tqs.core.list_namespaced_pod(tqs.namespace, label_selector=selector).items
            if pod.metadata.deletion_timestamp is None]


def condition(pod: Any, kind: str) -> Any | None:
    return next((c for c in pod.status.conditions or [] if c.type == kind), None)


def is_ready(pod: Any) -> bool:
    found = condition(pod, "Ready")
    return found is not None and found.status == "True"


def container_running(pod: Any) -> bool:
    return any(s.state.running for s in pod.status.container_statuses or [])


def send_records(url: str, count: int, key: str, seconds: float = 0, queue: str = "jobs") -> list[str]:
    producer = celery.Celery(broker=url)
    with producer.connection_for_write() as connection:
        return [producer.send_task("myapp.tasks.record", args=[key, index, seconds], queue=queue,
                                   connection=connection).id for index in range(count)]


def recorded_ids(url: str, key: str) -> list[str]:
    return [json.loads(item)["id"] for item in redis.Redis.from_url(url).lrange(key, 0, -1)]


def test_a_rolled_out_worker_counts_available_only_once_it_consumes(tqs: TaskQueues,
                                                                    redis_server: RedisServer) -> None:
    tqs.apply(taskqueue("roll", queues=[{"name": "jobs", "replicas": 1, "terminationGracePeriodSeconds": 10}],
                        broker={"url": redis_server.url}))
    tqs.wait_condition("roll", "WorkersReady", "True", timeout=READY_TIMEOUT)
    [old] = pods_of(tqs, "roll")
    gate = condition(old, GATE)
    assert gate is not None and gate.status == "True" and "consumes" in gate.message
    assert [g.condition_type for g in old.spec.readiness_gates] == [GATE]

    # the new template's app takes 20 s to load: its container runs, its worker does not consume yet
    tqs.patch_spec("roll", {"env": [{"name": "SAMPLE_APP_IMPORT_DELAY_SECONDS", "value": "20"}]})
    new = wait_for(lambda: [p for p in pods_of(tqs, "roll") if p.metadata.name != old.metadata.name
                            and container_running(p)], 90, "the new pod's container to run")[0]
    assert not is_ready(new) and condition(new, GATE) is None
    deployment = tqs.deployment("roll-worker-jobs")
    assert old.metadata.name in {p.metadata.name for p in pods_of(tqs, "roll")}, "the old worker still serves"
    assert (deployment.status.available_replicas or 0) == 1
    assert tqs.condition("roll", "WorkersReady")["status"] == "True"

    def consuming_and_ready() -> Any | None:
        [pod] = [p for p in pods_of(tqs, "roll") if p.metadata.name == new.metadata.name] or [None]
        return pod if pod is not None and is_ready(pod) else None

    ready = wait_for(consuming_and_ready, 90, "the new worker to consume and be Ready")
    gate = condition(ready, GATE)
    assert gate.status == "True"
    started = ready.status.container_statuses[0].state.running.started_at
    assert (gate.last_transition_time - started).total_seconds() >= 15, "Ready only after the app loaded"
    wait_for(lambda: [p.metadata.name for p in pods_of(tqs, "roll")] == [new.metadata.name], 60,
             "the old pod to go once the new one consumes")
    [task_id] = send_records(redis_server.url, 1, "roll-runs")
    assert wait_for(lambda: recorded_ids(redis_server.url, "roll-runs"), 60, "the new worker to run a task") == [task_id]


def test_a_frozen_worker_is_reported_and_replaced_and_its_queue_drains_with_nothing_lost(
        tqs: TaskQueues, rabbitmq: RabbitBroker, redis_server: RedisServer, operator: OperatorProcess) -> None:
    """RabbitMQ: what a frozen worker had reserved goes back to the queue once its connection closes.
    (On Redis, a message a frozen worker's pending BRPOP already took is in no broker structure.)"""
    tqs.core.create_namespaced_secret(tqs.namespace, {"metadata": {"name": "frozen-amqp"},
                                                      "stringData": {"url": rabbitmq.url}})
    tqs.apply(taskqueue(
        "frozen", broker={"urlSecretRef": {"name": "frozen-amqp", "key": "url"}},
        env=[{"name": "RECORD_REDIS_URL", "value": redis_server.url}],
        workers={"health": {"heartbeatTimeoutSeconds": 10}},
        queues=[{"name": "jobs", "replicas": 2, "terminationGracePeriodSeconds": 5}]))
    wait_for(lambda: len([p for p in pods_of(tqs, "frozen") if is_ready(p)]) == 2, READY_TIMEOUT,
             "two consuming workers")
    victim_pod = pods_of(tqs, "frozen")[0]
    victim = victim_pod.metadata.name
    ids = send_records(rabbitmq.url, 60, "frozen-runs", seconds=0.3)
    wait_for(lambda: len(recorded_ids(redis_server.url, "frozen-runs")) >= 4, 60, "the first tasks to run")
    containers.freeze(victim_pod.status.container_statuses[0].container_id)

    stuck = wait_for(lambda: [e for e in tqs.events("frozen") if e.reason == "WorkerStuck"], 60,
                     "a WorkerStuck Event")
    assert victim in stuck[0].message and "no heartbeat" in stuck[0].message and stuck[0].type == "Warning"
    wait_for(lambda: victim not in {p.metadata.name for p in pods_of(tqs, "frozen")}, 60,
             "the frozen pod to be deleted")
    wait_for(lambda: len([p for p in pods_of(tqs, "frozen") if is_ready(p)]) == 2, READY_TIMEOUT,
             "its replacement to consume")
    wait_for(lambda: set(ids) <= set(recorded_ids(redis_server.url, "frozen-runs")), 180, "every task to run")
    assert len([e for e in tqs.events("frozen") if e.reason == "WorkerStuck"]) == 1, "reported once"
    assert metric(operator, "celery_operator_stuck_workers_total", namespace=tqs.namespace, taskqueue="frozen",
                  queue="jobs", evidence="heartbeats-stopped") == 1


def metric(operator: OperatorProcess, name: str, **labels: str) -> float | None:
    """One sample of the session operator's /metrics, as a dashboard would scrape it."""
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_an_oom_killed_worker_is_reported_with_the_reason_and_its_task_in_flight(
        tqs: TaskQueues, redis_server: RedisServer, operator: OperatorProcess) -> None:
    """The threads pool runs the task in the worker's own process, so the kernel's OOM killer stops
    the container's main process and the kubelet restarts the container (with prefork, the killer
    takes the pool child and Celery replaces it: no container restart to report)."""
    tqs.apply(taskqueue("oom", broker={"url": redis_server.url},
                        queues=[{"name": "jobs", "replicas": 1, "pool": "threads",
                                 "resources": {"limits": {"memory": "300Mi"}, "requests": {"memory": "100Mi"}}}]))
    wait_for(lambda: [p for p in pods_of(tqs, "oom") if is_ready(p)], READY_TIMEOUT, "a consuming worker")
    [pod] = pods_of(tqs, "oom")
    celery.Celery(broker=redis_server.url).send_task("myapp.tasks.allocate", args=[600, 5], queue="jobs")

    restarted = wait_for(lambda: [e for e in tqs.events("oom") if e.reason == "WorkerRestarted"], 120,
                         "a WorkerRestarted Event")
    message = restarted[0].message
    assert pod.metadata.name in message and "OOMKilled" in message and "1 task(s) in flight" in message, message
    entry = wait_for(lambda: next((q for q in tqs.get("oom").get("status", {}).get("queues", [])
                                   if q["name"] == "jobs" and q.get("restarts", 0) >= 1), None), 60,
                     "the restart in the status")
    assert entry["lastRestart"]["reason"] == "OOMKilled" and entry["lastRestart"]["inFlight"] == 1
    assert entry["lastRestart"]["pod"] == pod.metadata.name and entry["lastRestart"]["exitCode"] == 137
    assert metric(operator, "celery_operator_worker_restarts_total", namespace=tqs.namespace, taskqueue="oom",
                  queue="jobs", reason="OOMKilled") >= 1
