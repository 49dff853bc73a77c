from __future__ import annotations

import copy
from typing import Any

import pytest

from celery_operator.models import (
    ObjectIdentity,
    PeriodicJobSpec,
    Persistence,
    SecretKeyRef,
    SpecError,
    TaskQueueSpec,
    parse_go_duration,
    parse_periodicjob_spec,
    parse_taskqueue_spec,
    validate_taskqueue_name,
)

pytestmark = pytest.mark.unit

MINIMAL: dict[str, Any] = {"image": "shop:1", "app": "myproject", "queues": [{"name": "celery"}]}

# The same spec as the API server stores it after applying the CRD schema defaults.
DEFAULTED: dict[str, Any] = {
    "image": "shop:1",
    "app": "myproject",
    "queues": [{"name": "celery", "replicas": 1}],
    "workers": {
        "concurrency": 2, "pool": "prefork", "prefetchMultiplier": 1, "maxTasksPerChild": 0,
        "terminationGracePeriodSeconds": 300,
    },
    "autoscaling": {"pollIntervalSeconds": 2, "scaleDownStabilizationSeconds": 60},
    "beat": {"scheduler": ""},
    "flower": {"enabled": False},
}


def spec_with(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(MINIMAL)
    spec.update(changes)
    return spec


def expect_error(spec: dict[str, Any], field: str) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_taskqueue_spec(spec)
    assert caught.value.field == field, str(caught.value)
    return caught.value


def test_minimal_spec_gets_every_default() -> None:
    spec = parse_taskqueue_spec(MINIMAL)
    assert spec.image == "shop:1"
    assert spec.app == "myproject"
    (queue,) = spec.queues
    assert queue.name == "celery"
    assert queue.replicas == 1
    assert queue.autoscaling is None
    assert not queue.autoscaled
    workers = queue.workers
    assert (workers.concurrency, workers.pool, workers.prefetch_multiplier) == (2, "prefork", 1)
    assert (workers.max_tasks_per_child, workers.termination_grace_period_seconds) == (0, 300)
    assert workers.extra_args == ()
    assert spec.broker.kind == "managed"
    assert spec.broker.managed is not None
    assert spec.broker.managed.image is None, "no image named: the operator's default applies"
    assert spec.broker.managed.persistence == Persistence(size="1Gi", storage_class_name=""), "durable by default"
    assert spec.result_backend is None
    assert spec.autoscaling.poll_interval_seconds == 2
    assert spec.autoscaling.scale_down_stabilization_seconds == 60
    assert spec.beat.scheduler == ""
    assert not spec.beat.custom_scheduler
    assert spec.flower.enabled is False
    assert spec.flower.image is None
    assert spec.pod.security_context is None
    assert spec.image_pull_policy is None
    assert spec.service_account_name is None


def test_defaulted_spec_parses_the_same_as_minimal() -> None:
    assert parse_taskqueue_spec(DEFAULTED) == parse_taskqueue_spec(MINIMAL)


def test_parse_classmethod_is_the_same_parser() -> None:
    assert TaskQueueSpec.parse(MINIMAL) == parse_taskqueue_spec(MINIMAL)


def test_queue_overrides_win_over_workers_and_the_rest_is_inherited() -> None:
    spec = parse_taskqueue_spec(spec_with(
        workers={"concurrency": 4, "pool": "threads", "maxTasksPerChild": 100,
                 "resources": {"limits": {"memory": "1Gi"}}, "extraArgs": ["-O", "fair"]},
        queues=[
            {"name": "fast", "concurrency": 16, "pool": "gevent", "extraArgs": ["--without-heartbeat"]},
            {"name": "plain"},
        ],
    ))
    fast, plain = spec.queues
    assert fast.workers.concurrency == 16
    assert fast.workers.pool == "gevent"
    assert fast.workers.max_tasks_per_child == 100
    assert fast.workers.resources == {"limits": {"memory": "1Gi"}}
    assert fast.workers.extra_args == ("--without-heartbeat",)
    assert plain.workers.concurrency == 4
    assert plain.workers.pool == "threads"
    assert plain.workers.extra_args == ("-O", "fair")
    assert spec.workers.concurrency == 4


def test_queue_resources_override_replaces_as_a_whole() -> None:
    spec = parse_taskqueue_spec(spec_with(
        workers={"resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "1"}}},
        queues=[{"name": "q", "resources": {"requests": {"cpu": "2"}}}],
    ))
    assert spec.queues[0].workers.resources == {"requests": {"cpu": "2"}}


def test_target_tasks_per_replica_defaults_to_effective_concurrency() -> None:
    spec = parse_taskqueue_spec(spec_with(
        workers={"concurrency": 3},
        queues=[
            {"name": "a", "autoscaling": {"maxReplicas": 5}},
            {"name": "b", "concurrency": 8, "autoscaling": {"maxReplicas": 5}},
            {"name": "c", "concurrency": 8, "autoscaling": {"maxReplicas": 5, "targetTasksPerReplica": 2}},
        ],
    ))
    a, b, c = spec.queues
    assert a.autoscaling is not None and a.autoscaling.target_tasks_per_replica == 3
    assert b.autoscaling is not None and b.autoscaling.target_tasks_per_replica == 8
    assert c.autoscaling is not None and c.autoscaling.target_tasks_per_replica == 2
    assert a.autoscaling.min_replicas == 0
    assert a.autoscaling.max_replicas == 5
    assert spec.autoscaled_queues == (a, b, c)


def test_queue_lookup_and_dns_name() -> None:
    spec = parse_taskqueue_spec(spec_with(queues=[{"name": "High_Priority"}, {"name": "low"}]))
    assert spec.queue("High_Priority").dns_name == "high-priority"
    with pytest.raises(KeyError):
        spec.queue("missing")


def test_broker_url_kind() -> None:
    spec = parse_taskqueue_spec(spec_with(broker={"url": "redis://redis.shared:6379/0"}))
    assert spec.broker.kind == "url"
    assert spec.broker.url == "redis://redis.shared:6379/0"
    assert spec.broker.managed is None


def test_broker_secret_ref_kind() -> None:
    spec = parse_taskqueue_spec(spec_with(broker={"urlSecretRef": {"name": "shop-broker", "key": "url"}}))
    assert spec.broker.kind == "secretRef"
    assert spec.broker.url_secret_ref == SecretKeyRef(name="shop-broker", key="url")


def test_managed_broker_with_persistence() -> None:
    spec = parse_taskqueue_spec(spec_with(broker={"managed": {
        "image": "redis:7.2", "resources": {"limits": {"memory": "256Mi"}},
        "persistence": {"size": "2Gi", "storageClassName": "fast"},
    }}))
    managed = spec.broker.managed
    assert managed is not None
    assert managed.image == "redis:7.2"
    assert managed.resources == {"limits": {"memory": "256Mi"}}
    assert managed.persistence is not None
    assert (managed.persistence.size, managed.persistence.storage_class_name) == ("2Gi", "fast")


@pytest.mark.parametrize("persistence", [None, {}, {"enabled": True}])
def test_a_managed_broker_is_durable_unless_told_otherwise(persistence: dict | None) -> None:
    spec = parse_taskqueue_spec(spec_with(broker={"managed": {"persistence": persistence}}))
    assert spec.broker.managed is not None and spec.broker.managed.persistence == Persistence("1Gi", "")


def test_a_claim_is_read_write_once_pod_unless_the_storage_needs_read_write_once() -> None:
    spec = parse_taskqueue_spec(spec_with(broker={"managed": {"persistence": {"accessMode": "ReadWriteOnce"}}}))
    assert spec.broker.managed is not None and spec.broker.managed.persistence is not None
    assert spec.broker.managed.persistence.access_mode == "ReadWriteOnce"
    assert Persistence().access_mode == "ReadWriteOncePod"
    expect_error(spec_with(broker={"managed": {"persistence": {"accessMode": "ReadWriteMany"}}}),
                 "spec.broker.managed.persistence.accessMode")


def test_an_ephemeral_broker_is_an_explicit_choice() -> None:
    spec = parse_taskqueue_spec(spec_with(broker={"managed": {"persistence": {"enabled": False, "size": "2Gi"}}}))
    assert spec.broker.managed is not None and spec.broker.managed.persistence is None


def test_empty_broker_is_managed() -> None:
    assert parse_taskqueue_spec(spec_with(broker={})).broker.kind == "managed"


def test_result_backend_kinds() -> None:
    by_url = parse_taskqueue_spec(spec_with(resultBackend={"url": "rpc://"}))
    assert by_url.result_backend is not None and by_url.result_backend.url == "rpc://"
    by_ref = parse_taskqueue_spec(spec_with(resultBackend={"urlSecretRef": {"name": "r", "key": "url"}}))
    assert by_ref.result_backend is not None
    assert by_ref.result_backend.url_secret_ref == SecretKeyRef("r", "url")


def test_pod_overrides() -> None:
    spec = parse_taskqueue_spec(spec_with(pod={
        "annotations": {"a": "1"}, "labels": {"team": "x"}, "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "k", "operator": "Exists"}], "affinity": {"nodeAffinity": {}},
        "priorityClassName": "high", "securityContext": {"runAsUser": 1000},
    }))
    assert spec.pod.annotations == {"a": "1"}
    assert spec.pod.labels == {"team": "x"}
    assert spec.pod.node_selector == {"disk": "ssd"}
    assert spec.pod.tolerations == ({"key": "k", "operator": "Exists"},)
    assert spec.pod.affinity == {"nodeAffinity": {}}
    assert spec.pod.priority_class_name == "high"
    assert spec.pod.security_context == {"runAsUser": 1000}


def test_parsing_copies_passthrough_values() -> None:
    raw = spec_with(pod={"affinity": {"nodeAffinity": {"x": 1}}})
    spec = parse_taskqueue_spec(raw)
    raw["pod"]["affinity"]["nodeAffinity"]["x"] = 2
    assert spec.pod.affinity == {"nodeAffinity": {"x": 1}}


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"app": "a", "queues": [{"name": "q"}]}, "spec.image"),
        ({"image": "i", "queues": [{"name": "q"}]}, "spec.app"),
        ({"image": "i", "app": "a"}, "spec.queues"),
        (spec_with(queues=[]), "spec.queues"),
        (spec_with(queues=[{"name": f"q{i}"} for i in range(51)]), "spec.queues"),
        (spec_with(queues=[{"name": "a"}, {"name": "a"}]), "spec.queues[1].name"),
        (spec_with(queues=[{"name": "high_priority"}, {"name": "High.Priority"}]), "spec.queues[1].name"),
        (spec_with(queues=[{"name": "a b"}]), "spec.queues[0].name"),
        (spec_with(queues=[{"name": "_leading"}]), "spec.queues[0].name"),
        (spec_with(queues=[{}]), "spec.queues[0].name"),
        (spec_with(queues=[{"name": "q", "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}]),
         "spec.queues[0].autoscaling.maxReplicas"),
        (spec_with(queues=[{"name": "q", "autoscaling": {"maxReplicas": 0}}]),
         "spec.queues[0].autoscaling.maxReplicas"),
        (spec_with(queues=[{"name": "q", "autoscaling": {}}]), "spec.queues[0].autoscaling.maxReplicas"),
        (spec_with(queues=[{"name": "q", "concurrency": 0}]), "spec.queues[0].concurrency"),
        (spec_with(workers={"concurrency": 0}), "spec.workers.concurrency"),
        (spec_with(workers={"concurrency": "2"}), "spec.workers.concurrency"),
        (spec_with(workers={"concurrency": True}), "spec.workers.concurrency"),
        (spec_with(workers={"pool": "fork"}), "spec.workers.pool"),
        (spec_with(workers={"extraArgs": "-O fair"}), "spec.workers.extraArgs"),
        (spec_with(broker={"managed": {}, "url": "redis://r:6379/0"}), "spec.broker"),
        (spec_with(broker={"url": "redis://:secret@r:6379/0"}), "spec.broker.url"),
        (spec_with(broker={"url": "amqp://user:secret@r:5672//"}), "spec.broker.url"),
        (spec_with(broker={"url": "http://r/"}), "spec.broker.url"),
        (spec_with(broker={"urlSecretRef": {"name": "s"}}), "spec.broker.urlSecretRef.key"),
        (spec_with(broker={"managed": {"persistence": {"size": ""}}}), "spec.broker.managed.persistence.size"),
        (spec_with(broker={"managed": {"persistence": {"enabled": "no"}}}), "spec.broker.managed.persistence.enabled"),
        (spec_with(resultBackend={}), "spec.resultBackend"),
        (spec_with(resultBackend={"url": "db+postgresql://u:p@db/x"}), "spec.resultBackend.url"),
        (spec_with(autoscaling={"pollIntervalSeconds": 0}), "spec.autoscaling.pollIntervalSeconds"),
        (spec_with(autoscaling={"pollIntervalSeconds": 301}), "spec.autoscaling.pollIntervalSeconds"),
        (spec_with(autoscaling={"scaleDownStabilizationSeconds": 3601}),
         "spec.autoscaling.scaleDownStabilizationSeconds"),
        (spec_with(imagePullPolicy="Sometimes"), "spec.imagePullPolicy"),
        (spec_with(env=[{"name": "A"}, {"name": "A", "value": "2"}]), "spec.env[1].name"),
        (spec_with(pod={"labels": {"a": 1}}), "spec.pod.labels.a"),
        (spec_with(flower={"enabled": "yes"}), "spec.flower.enabled"),
    ],
)
def test_spec_errors_name_the_field(spec: dict[str, Any], field: str) -> None:
    error = expect_error(spec, field)
    assert str(error).startswith(field + ": ")


def test_password_in_url_is_not_echoed() -> None:
    error = expect_error(spec_with(broker={"url": "redis://:hunter2@r:6379/0"}), "spec.broker.url")
    assert "hunter2" not in str(error)


@pytest.mark.parametrize("url", ["redis://r:6379/0", "redis://user@r:6379/0", "rediss://r:6380/1",
                                 "amqp://r:5672//", "redis://[::1]:6379/0"])
def test_urls_without_password_are_fine(url: str) -> None:
    assert parse_taskqueue_spec(spec_with(broker={"url": url})).broker.url == url


def test_identity_from_body_and_owner_reference() -> None:
    identity = ObjectIdentity.from_body({
        "apiVersion": "celery-operator.dev/v1alpha1", "kind": "TaskQueue",
        "metadata": {"name": "shop", "namespace": "prod", "uid": "u-1", "generation": 4},
    })
    assert identity == ObjectIdentity(name="shop", namespace="prod", uid="u-1", generation=4)
    assert identity.owner_reference() == {
        "apiVersion": "celery-operator.dev/v1alpha1", "kind": "TaskQueue", "name": "shop", "uid": "u-1",
        "controller": True, "blockOwnerDeletion": True,
    }


@pytest.mark.parametrize("name", ["shop", "a", "s" * 40, "shop-2"])
def test_valid_taskqueue_names(name: str) -> None:
    validate_taskqueue_name(name)


@pytest.mark.parametrize("name", ["s" * 41, "my.shop", "1shop", "shop-", "Shop"])
def test_invalid_taskqueue_names(name: str) -> None:
    with pytest.raises(SpecError) as caught:
        validate_taskqueue_name(name)
    assert caught.value.field == "metadata.name"


# --- PeriodicJob -----------------------------------------------------------------------------------


def test_periodicjob_with_schedule_and_defaults() -> None:
    job = parse_periodicjob_spec({
        "taskQueueRef": {"name": "shop"}, "task": "myapp.tasks.daily_cleanup", "schedule": "0 3 * * *",
    })
    assert job == PeriodicJobSpec(task_queue_name="shop", task="myapp.tasks.daily_cleanup", schedule="0 3 * * *")
    assert job.time_zone == "UTC"
    assert job.args == ()
    assert job.kwargs == {}
    assert job.suspend is False
    assert job.expires_seconds == 0
    assert job.interval_seconds is None


def test_periodicjob_with_interval_and_everything() -> None:
    job = PeriodicJobSpec.parse({
        "taskQueueRef": {"name": "shop"}, "task": "myapp.tasks.add", "interval": "1h30m",
        "timeZone": "Europe/Berlin", "args": [4, 6], "kwargs": {"k": [1]}, "queue": "low_priority",
        "suspend": True, "expiresSeconds": 60,
    })
    assert job.interval == "1h30m"
    assert job.interval_seconds == 5400
    assert job.schedule is None
    assert job.time_zone == "Europe/Berlin"
    assert job.args == (4, 6)
    assert job.kwargs == {"k": [1]}
    assert job.queue == "low_priority"
    assert job.suspend is True
    assert job.expires_seconds == 60


@pytest.mark.parametrize("schedule", ["@hourly", "@daily", "@weekly", "@monthly", "@yearly",
                                      "*/5 9-17 * JAN-DEC MON-FRI", "0 0 1,15 * *"])
def test_periodicjob_accepts_schedules(schedule: str) -> None:
    base = {"taskQueueRef": {"name": "shop"}, "task": "t"}
    assert parse_periodicjob_spec({**base, "schedule": schedule}).schedule == schedule


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"schedule": "@daily", "interval": "5m"}, "spec"),
        ({}, "spec"),
        ({"schedule": "0 3 * *"}, "spec.schedule"),
        ({"schedule": "@sometimes"}, "spec.schedule"),
        ({"interval": "5 minutes"}, "spec.interval"),
        ({"interval": "500ms"}, "spec.interval"),
        ({"interval": "5s", "args": {"a": 1}}, "spec.args"),
        ({"interval": "5s", "kwargs": [1]}, "spec.kwargs"),
        ({"interval": "5s", "queue": "a b"}, "spec.queue"),
        ({"interval": "5s", "expiresSeconds": -1}, "spec.expiresSeconds"),
    ],
)
def test_periodicjob_errors_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_periodicjob_spec({"taskQueueRef": {"name": "shop"}, "task": "t", **changes})
    assert caught.value.field == field


def test_periodicjob_requires_task_queue_ref() -> None:
    with pytest.raises(SpecError) as caught:
        parse_periodicjob_spec({"task": "t", "interval": "5s"})
    assert caught.value.field == "spec.taskQueueRef.name"


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h30m", 5400), ("1.5h", 5400),
                                               ("1500ms", 1.5), ("2m3s", 123)])
def test_parse_go_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)
