"""Queue-depth autoscaling end to end: the operator, the devcluster's node agent running real
Celery workers of the sample app, and a real Redis the test starts."""

from __future__ import annotations

import base64
import json
import urllib.request
from pathlib import Path
from typing import Any

import celery
import pytest
import redis

from tests.helpers.brokers import RabbitBroker, arrival_subscriptions
from tests.helpers.operator import OperatorProcess
from tests.helpers.processes import RedisServer, start_redis
from tests.helpers.taskqueues import TaskQueues, taskqueue
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.e2e


def autoscaled(name: str, url: str, max_replicas: int = 4, window: int = 4, **queue: Any) -> dict[str, Any]:
    return taskqueue(
        name, broker={"url": url}, resultBackend={"url": url},
        queues=[{"name": "jobs", "autoscaling": {"maxReplicas": max_replicas, **queue.pop("autoscaling", {})},
                 "terminationGracePeriodSeconds": 60, **queue}],
        autoscaling={"pollIntervalSeconds": 1, "scaleDownStabilizationSeconds": window})


def send(url: str, count: int, key: str, seconds: float = 0, queue: str = "jobs", **options: Any) -> None:
    producer = celery.Celery(broker=url)
    with producer.connection_for_write() as connection:
        for index in range(count):
            producer.send_task("myapp.tasks.record", args=[key, index, seconds], queue=queue,
                               connection=connection, **options)


def recorded(url: str, key: str) -> list[dict[str, Any]]:
    return [json.loads(item) for item in redis.Redis.from_url(url).lrange(key, 0, -1)]


def replicas(tqs: TaskQueues, deployment: str) -> int:
    return tqs.deployment(deployment).spec.replicas


def queue_status(tqs: TaskQueues, name: str, queue: str = "jobs") -> dict[str, Any]:
    for entry in tqs.get(name).get("status", {}).get("queues", []):
        if entry["name"] == queue:
            return entry
    return {}


def test_a_burst_scales_up_drains_and_returns_to_zero(tqs: TaskQueues, redis_server: RedisServer) -> None:
    url = redis_server.url
    tqs.apply(autoscaled("burst", url))
    tqs.wait_condition("burst", "Ready", "True")
    tqs.wait_condition("burst", "Autoscaling", "True")
    assert replicas(tqs, "burst-worker-jobs") == 0

    send(url, 24, "burst-runs", seconds=0.5)
    wait_for(lambda: queue_status(tqs, "burst").get("pending", 0) > 0, 10, "the backlog in the status")
    peak = wait_for(lambda: (n := replicas(tqs, "burst-worker-jobs")) > 1 and n, 20, "a scale-up")
    assert peak <= 4
    wait_for(lambda: len(recorded(url, "burst-runs")) == 24, 120, "all 24 tasks to run")
    assert sorted(entry["value"] for entry in recorded(url, "burst-runs")) == list(range(24)), "none lost or doubled"
    wait_for(lambda: replicas(tqs, "burst-worker-jobs") == 0, 60, "the return to zero after the window")

    events = tqs.events("burst")
    scaled_up = [event.message for event in events if event.reason == "ScaledUp"]
    assert scaled_up and any(event.reason == "ScaledDown" for event in events)
    # the first message may wake the scaler while the rest are still being sent: 0 → 1, then → 4
    assert any("0 → " in message for message in scaled_up) and all("pending" in m for m in scaled_up)
    status = queue_status(tqs, "burst")
    assert (status["pending"], status["inFlight"], status["desiredReplicas"]) == (0, 0, 0)
    assert status["lastScaleTime"]


def scraped_metrics(operator: OperatorProcess) -> str:
    with urllib.request.urlopen(operator.metrics_url, timeout=5) as response:
        return response.read().decode()


def test_arrivals_wake_the_scaler_before_the_next_poll_at_zero_and_when_busy(
        tqs: TaskQueues, operator: OperatorProcess) -> None:
    """pollIntervalSeconds 300: within the deadlines, only the managed Redis's keyspace notifications
    can have started the first worker (the queue's first message) and the second (a backlog beyond
    what the busy first one takes)."""
    tqs.apply(taskqueue("wake", queues=[{"name": "jobs", "concurrency": 1,
                                         "autoscaling": {"maxReplicas": 2, "targetTasksPerReplica": 1}}],
                        autoscaling={"pollIntervalSeconds": 300, "scaleDownStabilizationSeconds": 0}))
    tqs.wait_condition("wake", "Ready", "True", timeout=120)
    tqs.wait_condition("wake", "Autoscaling", "True", timeout=60)
    assert replicas(tqs, "wake-worker-jobs") == 0
    secret = tqs.core.read_namespaced_secret("wake-broker", tqs.namespace)
    url = base64.b64decode(secret.data["url"]).decode()
    wait_for(lambda: arrival_subscriptions(url) == 1, 30, "the scaler watching the idle queue")

    send(url, 1, "wake-long", seconds=30)
    wait_for(lambda: replicas(tqs, "wake-worker-jobs") == 1, 30, "the scale-up, long before the next poll")
    wait_for(lambda: redis.Redis.from_url(url).llen("jobs") == 0, 120, "the long task taken by the worker")
    # the worker's coming online woke one more tick, the first to see the queue at 1 replica (and one
    # a second later if the operator's heartbeat monitor was still warming up); after them only
    # arrivals can wake the scaler before the next poll
    at_one = f'celery_operator_queue_replicas{{namespace="{tqs.namespace}",queue="jobs",taskqueue="wake"}} 1.0'
    wait_for(lambda: at_one in scraped_metrics(operator), 30, "a tick of the queue at 1 replica")
    wait_for(lambda: arrival_subscriptions(url) == 1, 10, "the busy queue below maxReplicas watched")

    send(url, 3, "wake-runs")
    wait_for(lambda: replicas(tqs, "wake-worker-jobs") == 2, 30, "a second worker, long before the next poll")
    wait_for(lambda: arrival_subscriptions(url) == 0, 10, "no watch at maxReplicas")
    wait_for(lambda: len(recorded(url, "wake-runs")) == 3 and len(recorded(url, "wake-long")) == 1, 120,
             "every task to run")


def test_a_long_task_outlives_the_scale_down(tqs: TaskQueues, redis_server: RedisServer) -> None:
    """The worker running a task longer than the window is the last to go, and the task completes."""
    url = redis_server.url
    tqs.apply(autoscaled("long", url, max_replicas=3, window=3))
    tqs.wait_condition("long", "Ready", "True")
    tqs.wait_condition("long", "Autoscaling", "True")

    send(url, 1, "long-runs", seconds=25)
    send(url, 10, "short-runs", seconds=1)
    wait_for(lambda: replicas(tqs, "long-worker-jobs") >= 2, 30, "a scale-up")
    wait_for(lambda: len(recorded(url, "short-runs")) == 10, 90, "the short tasks")
    wait_for(lambda: replicas(tqs, "long-worker-jobs") == 1, 30, "the scale-down to the one busy worker")
    assert recorded(url, "long-runs") == [], "the long task is still running"

    [entry] = wait_for(lambda: recorded(url, "long-runs"), 60, "the long task to complete")
    assert entry["value"] == 0
    wait_for(lambda: replicas(tqs, "long-worker-jobs") == 0, 60, "the last worker to go once idle")


def test_priority_messages_count_toward_pending(tqs: TaskQueues, redis_server: RedisServer) -> None:
    url = redis_server.url
    tqs.apply(taskqueue("prio", broker={"url": url}, queues=[{"name": "jobs", "replicas": 0}]))
    tqs.wait_condition("prio", "Ready", "True")
    for priority in (0, 5, 9):
        send(url, 2, "never", priority=priority)
    wait_for(lambda: queue_status(tqs, "prio").get("pending") == 6, 20, "pending to count all priorities")
    assert tqs.get("prio")["status"]["pending"] == 6


def test_broker_outage_holds_replicas_then_scaling_resumes(tqs: TaskQueues, redis_server: RedisServer,
                                                          tmp_path: Path) -> None:
    url = redis_server.url
    tqs.apply(autoscaled("outage", url, window=2, autoscaling={"minReplicas": 1}))
    tqs.wait_condition("outage", "Ready", "True")
    tqs.wait_condition("outage", "Autoscaling", "True")
    send(url, 8, "outage-runs", seconds=4)
    held = wait_for(lambda: (n := replicas(tqs, "outage-worker-jobs")) >= 2 and n, 30, "a scale-up")

    redis_server.stop()
    condition = tqs.wait_condition("outage", "Autoscaling", "False", "BrokerUnavailable", timeout=30)
    assert "held" in condition["message"]
    wait_for(lambda: [e for e in tqs.events("outage") if e.reason == "BrokerUnavailable"], 10, "the Event")
    assert replicas(tqs, "outage-worker-jobs") == held, "replicas stay where they were"

    restarted = start_redis(tmp_path / "redis-again", port=redis_server.port, host=redis_server.host)
    try:
        tqs.wait_condition("outage", "Autoscaling", "True", timeout=30)
        wait_for(lambda: replicas(tqs, "outage-worker-jobs") == 1, 60, "scaling to resume (down to min)")
    finally:
        restarted.stop()


def test_kubectl_scale_of_an_autoscaled_queue_is_overridden(tqs: TaskQueues, redis_server: RedisServer) -> None:
    tqs.apply(autoscaled("manual", redis_server.url, window=2))
    tqs.wait_condition("manual", "Autoscaling", "True")
    tqs.cluster.kubectl("scale", "-n", tqs.namespace, "deployment/manual-worker-jobs", "--replicas=3")
    wait_for(lambda: replicas(tqs, "manual-worker-jobs") == 3, 10, "kubectl's scale to land")
    wait_for(lambda: replicas(tqs, "manual-worker-jobs") == 0, 30, "the scaler to take its replicas back")


def amqp_taskqueue(tqs: TaskQueues, name: str, amqp_url: str, record_url: str, window: int = 3,
                   **autoscaling: Any) -> None:
    """A TaskQueue on RabbitMQ: the URL (with its password) comes from the user's Secret."""
    tqs.core.create_namespaced_secret(tqs.namespace, {"metadata": {"name": f"{name}-amqp"},
                                                      "stringData": {"url": amqp_url}})
    body = autoscaled(name, amqp_url, window=window, autoscaling=autoscaling)
    body["spec"]["broker"] = {"urlSecretRef": {"name": f"{name}-amqp", "key": "url"}}
    body["spec"]["resultBackend"] = {"url": record_url}
    body["spec"]["env"] = [{"name": "RECORD_REDIS_URL", "value": record_url}]
    tqs.apply(body)


def test_rabbitmq_burst_scales_up_drains_and_returns_to_zero(tqs: TaskQueues, rabbitmq: RabbitBroker,
                                                            redis_server: RedisServer) -> None:
    amqp_taskqueue(tqs, "rabbit", rabbitmq.url, redis_server.url)
    tqs.wait_condition("rabbit", "Ready", "True")
    tqs.wait_condition("rabbit", "Autoscaling", "True")
    send(rabbitmq.url, 16, "rabbit-runs", seconds=0.5)
    wait_for(lambda: replicas(tqs, "rabbit-worker-jobs") > 1, 20, "a scale-up")
    wait_for(lambda: len(recorded(redis_server.url, "rabbit-runs")) == 16, 120, "all 16 tasks to run")
    assert sorted(e["value"] for e in recorded(redis_server.url, "rabbit-runs")) == list(range(16))
    wait_for(lambda: replicas(tqs, "rabbit-worker-jobs") == 0, 60, "the return to zero")


def test_rabbitmq_outage_holds_replicas_then_scaling_resumes(tqs: TaskQueues, rabbitmq: RabbitBroker,
                                                            redis_server: RedisServer) -> None:
    amqp_taskqueue(tqs, "rabbitdown", rabbitmq.url, redis_server.url, window=2, minReplicas=1)
    tqs.wait_condition("rabbitdown", "Autoscaling", "True")
    wait_for(lambda: replicas(tqs, "rabbitdown-worker-jobs") == 1, 20, "minReplicas")
    rabbitmq.stop()
    try:
        tqs.wait_condition("rabbitdown", "Autoscaling", "False", "BrokerUnavailable", timeout=30)
        assert replicas(tqs, "rabbitdown-worker-jobs") == 1
    finally:
        rabbitmq.start()
    tqs.wait_condition("rabbitdown", "Autoscaling", "True", timeout=60)


def test_metrics_endpoint_reports_each_queue(tqs: TaskQueues, redis_server: RedisServer,
                                             operator: OperatorProcess) -> None:
    tqs.apply(taskqueue("metered", broker={"url": redis_server.url}, queues=[{"name": "jobs", "replicas": 0}]))
    send(redis_server.url, 3, "never")
    labels = f'namespace="{tqs.namespace}",queue="jobs",taskqueue="metered"'

    def scraped() -> str | None:
        text = scraped_metrics(operator)
        return text if f"celery_operator_queue_pending{{{labels}}} 3.0" in text else None

    text = wait_for(scraped, 30, "the pending gauge of the queue")
    for series in ("celery_operator_queue_in_flight", "celery_operator_queue_desired_replicas",
                   "celery_operator_queue_replicas"):
        assert f"{series}{{{labels}}}" in text
    assert "celery_operator_scaler_tick_seconds_count" in text
    assert "celery_operator_broker_errors_total" in text
