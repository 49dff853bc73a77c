"""The TaskQueue reconciler end to end: the operator as a process, the devcluster's real API,
real Redis. Every behaviour of issue 3 a user relies on."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import celery
import kubernetes
import redis
import pytest

from tests.helpers.operator import OperatorProcess
from tests.helpers.processes import RedisServer, free_port, start_redis
from tests.helpers.taskqueues import SAMPLE_APP_IMAGE, TaskQueues, taskqueue
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.e2e

MANAGED_BY = "app.kubernetes.io/managed-by=celery-operator"


def _secret_values(tqs: TaskQueues, name: str) -> dict[str, str]:
    secret = tqs.core.read_namespaced_secret(name, tqs.namespace)
    return {key: base64.b64decode(value).decode() for key, value in secret.data.items()}


def _serialized(api_object: Any) -> str:
    return json.dumps(kubernetes.client.ApiClient().sanitize_for_serialization(api_object))


def test_managed_broker_children_names_labels_owners_and_security(tqs: TaskQueues, operator: OperatorProcess) -> None:
    body = taskqueue("shop", queues=[{"name": "high_priority", "autoscaling": {"maxReplicas": 3}},
                                     {"name": "Low.Prio:x", "replicas": 0, "concurrency": 8}],
                     workers={"extraArgs": ["--max-memory-per-child", "200000"]})
    tqs.apply(body)
    owner_uid = wait_for(lambda: tqs.get("shop")["metadata"]["uid"], 10, "the TaskQueue")
    wait_for(lambda: tqs.deployment("shop-worker-low-prio-x"), 30, "the second queue's Deployment")

    values = _secret_values(tqs, "shop-broker")
    assert set(values) == {"url", "password"}
    assert len(values["password"]) >= 24
    assert values["url"] == f"redis://:{values['password']}@shop-broker.{tqs.namespace}.svc:6379/0"

    broker = tqs.deployment("shop-broker")
    assert broker.spec.strategy.type == "Recreate"
    service = tqs.core.read_namespaced_service("shop-broker", tqs.namespace)
    assert [port.port for port in service.spec.ports] == [6379]

    high = tqs.deployment("shop-worker-high-priority")
    low = tqs.deployment("shop-worker-low-prio-x")
    for deployment, queue, dns in ((high, "high_priority", "high-priority"), (low, "Low.Prio:x", "low-prio-x")):
        labels = deployment.metadata.labels
        assert labels["app.kubernetes.io/name"] == "celery"
        assert labels["app.kubernetes.io/instance"] == "shop"
        assert labels["app.kubernetes.io/component"] == "worker"
        assert labels["app.kubernetes.io/managed-by"] == "celery-operator"
        assert labels["celery-operator.dev/queue"] == dns
        assert deployment.metadata.annotations["celery-operator.dev/queue-name"] == queue
        [reference] = deployment.metadata.owner_references
        assert (reference.kind, reference.name, reference.uid, reference.controller) == (
            "TaskQueue", "shop", owner_uid, True)
        pod = deployment.spec.template.spec
        assert pod.security_context.run_as_non_root is True
        assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
        container = pod.containers[0]
        assert container.security_context.allow_privilege_escalation is False
        assert container.security_context.capabilities.drop == ["ALL"]
        [broker_env] = [e for e in container.env if e.name == "CELERY_BROKER_URL"]
        assert (broker_env.value, broker_env.value_from.secret_key_ref.name,
                broker_env.value_from.secret_key_ref.key) == (None, "shop-broker", "url")
        assert pod.termination_grace_period_seconds == 300

    assert low.spec.template.spec.containers[0].command == [
        "celery", "-A", "myproject", "worker", "-Q", "Low.Prio:x", "--hostname", "Low.Prio:x@%h",
        "--concurrency", "8", "--pool", "prefork", "--prefetch-multiplier", "1", "--without-mingle", "--without-gossip",
        "--max-memory-per-child", "200000"]
    assert [gate.condition_type for gate in low.spec.template.spec.readiness_gates] == ["celery-operator.dev/consuming"]
    assert low.spec.replicas == 0
    assert high.spec.replicas == 0, "an autoscaled queue starts at minReplicas (default 0)"

    status = wait_for(lambda: tqs.get("shop").get("status", {}).get("queues") and tqs.get("shop")["status"],
                      30, "the TaskQueue's status")
    assert status["brokerSecretName"] == "shop-broker"
    assert [q["name"] for q in status["queues"]] == ["high_priority", "Low.Prio:x"]

    printed = tqs.cluster.kubectl("get", "tq", "-n", tqs.namespace).stdout.splitlines()
    assert printed[0].split() == ["NAME", "READY", "QUEUES", "PENDING", "WORKERS", "PAUSED", "AGE"]
    assert printed[1].split()[2] == "2" and "0/0" in printed[1].split()

    # the URL and its password appear nowhere but in the Secret
    everything = [
        *(_serialized(d) for d in tqs.apps.list_namespaced_deployment(tqs.namespace).items),
        *(_serialized(s) for s in tqs.core.list_namespaced_service(tqs.namespace).items),
        *(_serialized(e) for e in tqs.core.list_namespaced_event(tqs.namespace).items),
        json.dumps(tqs.get("shop")), operator.log_text(),
    ]
    for text in everything:
        assert values["password"] not in text


def test_spec_changes_update_children_in_place(tqs: TaskQueues, redis_server: RedisServer) -> None:
    tqs.apply(taskqueue("app", queues=[{"name": "a", "replicas": 0}], broker={"url": redis_server.url}))
    first = wait_for(lambda: tqs.deployment("app-worker-a"), 30, "queue a's Deployment")

    tqs.patch_spec("app", {"queues": [{"name": "a", "replicas": 0, "concurrency": 5}, {"name": "b", "replicas": 0}],
                           "workers": {"terminationGracePeriodSeconds": 77}})
    wait_for(lambda: tqs.deployment("app-worker-b"), 30, "the added queue's Deployment")
    updated = wait_for(lambda: (d := tqs.deployment("app-worker-a")) and "5" in d.spec.template.spec.containers[0].command
                       and d, 30, "queue a's new concurrency")
    assert updated.metadata.uid == first.metadata.uid, "updated in place, never deleted and recreated"
    assert updated.spec.template.spec.termination_grace_period_seconds == 77

    tqs.patch_spec("app", {"queues": [{"name": "b", "replicas": 0}]})
    wait_for(lambda: tqs.deployment("app-worker-a") is None, 30, "the removed queue's Deployment to go")
    assert _secret_values(tqs, "app-broker") == {"url": redis_server.url}


def test_manual_edits_are_reverted_and_foreign_fields_kept(tqs: TaskQueues, redis_server: RedisServer) -> None:
    tqs.apply(taskqueue("edit", queues=[{"name": "q", "replicas": 0}], broker={"url": redis_server.url}))
    wait_for(lambda: tqs.deployment("edit-worker-q"), 30, "the worker Deployment")
    tqs.apps.patch_namespaced_deployment("edit-worker-q", tqs.namespace, {
        "metadata": {"annotations": {"team": "payments"}},
        "spec": {"replicas": 4, "template": {"spec": {"containers": [{"name": "worker", "image": "evil:1"}]}}}})

    def reverted() -> Any:
        deployment = tqs.deployment("edit-worker-q")
        image = deployment.spec.template.spec.containers[0].image
        return deployment.spec.replicas == 0 and image == SAMPLE_APP_IMAGE and deployment

    deployment = wait_for(reverted, 30, "the reconciler to revert replicas and image")
    assert deployment.metadata.annotations["team"] == "payments", "a field another tool owns is left alone"


def test_broker_secret_missing_reports_and_heals(tqs: TaskQueues, redis_server: RedisServer) -> None:
    tqs.apply(taskqueue("ext", queues=[{"name": "q", "replicas": 0}], broker={"url": redis_server.url}))
    tqs.wait_condition("ext", "Ready", "True")
    before = tqs.resource_versions("ext")
    del before["TaskQueue/ext"]

    tqs.patch_spec("ext", {"broker": {"url": None, "urlSecretRef": {"name": "ext-credentials", "key": "url"}}})
    condition = tqs.wait_condition("ext", "Ready", "False", "BrokerSecretNotFound")
    assert "spec.broker.urlSecretRef" in condition["message"] and "ext-credentials" in condition["message"]
    wait_for(lambda: [e for e in tqs.events("ext") if e.reason == "BrokerSecretNotFound"], 10, "the Event")
    time.sleep(3)  # three resync periods: the problem must not be reported again, nor children touched
    assert len([e for e in tqs.events("ext") if e.reason == "BrokerSecretNotFound"]) == 1
    after = tqs.resource_versions("ext")
    del after["TaskQueue/ext"]
    assert after == before, "children are left untouched while the spec cannot be honoured"

    tqs.core.create_namespaced_secret(tqs.namespace, {"metadata": {"name": "ext-credentials"},
                                                      "stringData": {"other": "x"}})
    tqs.wait_condition("ext", "Ready", "False", "BrokerSecretKeyNotFound")
    tqs.core.patch_namespaced_secret("ext-credentials", tqs.namespace, {"stringData": {"url": redis_server.url}})
    tqs.wait_condition("ext", "Ready", "True")
    assert _secret_values(tqs, "ext-broker") == {"url": redis_server.url}


def test_name_conflict_never_adopts_and_heals(tqs: TaskQueues, redis_server: RedisServer) -> None:
    foreign = {
        "metadata": {"name": "nc-worker-q", "labels": {"app": "someone-else"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "someone-else"}},
                 "template": {"metadata": {"labels": {"app": "someone-else"}},
                              "spec": {"containers": [{"name": "x", "image": "x:1", "command": ["true"]}]}}},
    }
    created = tqs.apps.create_namespaced_deployment(tqs.namespace, foreign)
    tqs.apply(taskqueue("nc", queues=[{"name": "q", "replicas": 0}], broker={"url": redis_server.url}))
    condition = tqs.wait_condition("nc", "Ready", "False", "NameConflict")
    assert "nc-worker-q" in condition["message"]
    wait_for(lambda: [e for e in tqs.events("nc") if e.reason == "NameConflict"], 10, "the NameConflict Event")
    time.sleep(2)
    untouched = tqs.deployment("nc-worker-q")
    assert untouched.metadata.generation == created.metadata.generation
    assert untouched.spec.template.spec.containers[0].image == "x:1"
    assert not untouched.metadata.owner_references
    assert "celery-operator" not in {entry.manager for entry in untouched.metadata.managed_fields}

    tqs.apps.delete_namespaced_deployment("nc-worker-q", tqs.namespace)
    tqs.wait_condition("nc", "Ready", "True")
    assert tqs.deployment("nc-worker-q").metadata.owner_references[0].name == "nc"


def test_unreachable_broker_reports_and_heals(tqs: TaskQueues, tmp_path: Path) -> None:
    port = free_port()
    host = tqs.cluster.host_ip
    url = f"redis://{host}:{port}/0"
    tqs.apply(taskqueue("down", queues=[{"name": "q", "replicas": 0}], broker={"url": url}))
    condition = tqs.wait_condition("down", "BrokerReady", "False", "BrokerUnreachable")
    assert tqs.condition("down", "Ready")["reason"] == "BrokerUnreachable"
    assert str(port) in condition["message"]
    assert tqs.deployment("down-worker-q") is not None, "children exist even while the broker is down"

    server = start_redis(tmp_path / "late-redis", port=port, host=host)
    try:
        tqs.wait_condition("down", "BrokerReady", "True")
        tqs.wait_condition("down", "Ready", "True")
    finally:
        server.stop()


def test_quiet_when_settled(tqs: TaskQueues, redis_server: RedisServer) -> None:
    tqs.apply(taskqueue("calm", queues=[{"name": "a", "replicas": 0}, {"name": "b", "autoscaling": {"maxReplicas": 2}}],
                        broker={"url": redis_server.url}, flower={"enabled": True}))
    tqs.wait_condition("calm", "Ready", "True")

    def flower_available() -> bool:
        flower = tqs.deployment("calm-flower")
        return bool(flower and flower.status.available_replicas == 1
                    and flower.status.observed_generation == flower.metadata.generation)

    wait_for(flower_available, 60, "Flower to run")
    settled = wait_for(lambda: (v := tqs.resource_versions("calm")) and len(v) >= 5 and v, 30, "all children")
    time.sleep(5)  # the operator resyncs every second: five reconciles with nothing to do
    assert tqs.resource_versions("calm") == settled


def test_managed_redis_runs_with_its_password_and_workers_consume(tqs: TaskQueues) -> None:
    """The node agent runs the managed Redis and a real worker; a producer uses the Secret's URL."""
    tqs.apply(taskqueue("live", queues=[{"name": "jobs", "replicas": 1}]))
    tqs.wait_condition("live", "Ready", "True", timeout=120)
    assert [(e.type, e.reason) for e in tqs.events("live") if e.type == "Warning"] == [], \
        "a healthy start reports progress, never a warning"
    url = _secret_values(tqs, "live-broker")["url"]

    anonymous = redis.Redis.from_url(url.replace(f":{_secret_values(tqs, 'live-broker')['password']}@", ""))
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()

    producer = celery.Celery(broker=url)
    producer.send_task("myapp.tasks.record", args=["runs", "hello"], queue="jobs")
    client = redis.Redis.from_url(url)
    [entry] = wait_for(lambda: client.lrange("runs", 0, -1), 60, "the worker to run the task")
    recorded = json.loads(entry)
    assert recorded["value"] == "hello"
    worker_pod = tqs.core.list_namespaced_pod(
        tqs.namespace, label_selector="celery-operator.dev/queue=jobs").items[0].metadata.name
    assert recorded["hostname"] == f"jobs@{worker_pod}"


def test_persistence_gets_a_volume_claim(tqs: TaskQueues) -> None:
    tqs.apply(taskqueue("disk", broker={"managed": {"persistence": {"size": "2Gi", "storageClassName": "fast"}}}))
    claim = wait_for(lambda: tqs.core.list_namespaced_persistent_volume_claim(
        tqs.namespace, label_selector="app.kubernetes.io/instance=disk").items, 30, "the broker's PVC")[0]
    assert (claim.metadata.name, claim.spec.resources.requests["storage"], claim.spec.storage_class_name) == (
        "disk-broker", "2Gi", "fast")
    volumes = tqs.deployment("disk-broker").spec.template.spec.volumes
    assert [v.persistent_volume_claim.claim_name for v in volumes if v.persistent_volume_claim] == ["disk-broker"]

    tqs.patch_spec("disk", {"broker": {"managed": {"persistence": {"enabled": False}}}})
    wait_for(lambda: not [v for v in tqs.deployment("disk-broker").spec.template.spec.volumes
                          if v.persistent_volume_claim], 30, "the broker to run on an emptyDir")
    assert tqs.core.read_namespaced_persistent_volume_claim("disk-broker", tqs.namespace), "its data is kept"
