from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest

from celery_operator import builders, naming
from celery_operator.builders.broker import build_broker_pvc, build_managed_broker
from celery_operator.builders.flower import build_flower
from celery_operator.builders.secret import build_broker_secret, managed_broker_url
from celery_operator.builders.worker import build_worker_deployment, worker_command
from celery_operator.children import child_key, decode_secret_value
from celery_operator.models import ObjectIdentity, TaskQueueSpec, parse_taskqueue_spec

pytestmark = pytest.mark.unit

OWNER = ObjectIdentity(name="shop", namespace="prod", uid="11111111-2222-3333-4444-555555555555", generation=3)
PASSWORD = "Zq8nC1pW0rD-not-in-manifests"
FLOWER_PASSWORD = "fl0wer-Pw-not-in-manifests"
EXTERNAL_URL = "rediss://:ext-pa55word@redis.example.com:6380/2"
IMAGES = builders.DefaultImages(beat="ghcr.io/celery-operator/celery-operator:0.1.0", redis="redis:7.4-alpine",
                                flower="mher/flower:2.0")

BASE: dict[str, Any] = {
    "image": "ghcr.io/acme/shop:1.4.2",
    "app": "myproject",
    "queues": [
        {"name": "high_priority", "autoscaling": {"minReplicas": 0, "maxReplicas": 10}, "concurrency": 8},
        {"name": "low_priority", "replicas": 3},
    ],
}


def parse(**changes: Any) -> TaskQueueSpec:
    spec = copy.deepcopy(BASE)
    spec.update(changes)
    return parse_taskqueue_spec(spec)


def by_key(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


def container(deployment: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    if name is None:
        (only,) = containers
        return only
    return next(c for c in containers if c["name"] == name)


def env_by_name(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


# --- the worker command line -------------------------------------------------------------------------


def test_worker_command_exact() -> None:
    spec = parse()
    assert worker_command(spec.app, spec.queue("high_priority")) == [
        "celery", "-A", "myproject", "worker", "-Q", "high_priority", "--hostname", "high_priority@%h",
        "--concurrency", "8", "--pool", "prefork", "--prefetch-multiplier", "1",
        "--without-mingle", "--without-gossip",
    ]


def test_mingle_and_gossip_come_back_when_asked_for_per_queue() -> None:
    spec = parse(workers={"mingle": True})
    assert "--without-mingle" not in worker_command(spec.app, spec.queue("low_priority"))
    assert "--without-gossip" in worker_command(spec.app, spec.queue("low_priority"))
    spec = parse(queues=[{"name": "jobs", "gossip": True}])
    assert worker_command(spec.app, spec.queue("jobs"))[-1:] == ["--without-mingle"]


def test_worker_command_with_max_tasks_per_child_and_extra_args() -> None:
    spec = parse(workers={"maxTasksPerChild": 50, "extraArgs": ["-O", "fair"], "pool": "threads",
                          "prefetchMultiplier": 4})
    assert worker_command(spec.app, spec.queue("low_priority")) == [
        "celery", "-A", "myproject", "worker", "-Q", "low_priority", "--hostname", "low_priority@%h",
        "--concurrency", "2", "--pool", "threads", "--prefetch-multiplier", "4",
        "--max-tasks-per-child", "50", "--without-mingle", "--without-gossip", "-O", "fair",
    ]


def test_worker_deployment_shape() -> None:
    spec = parse()
    deployment = build_worker_deployment(OWNER, spec, spec.queue("high_priority"))
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["kind"] == "Deployment"
    metadata = deployment["metadata"]
    assert metadata["name"] == "shop-worker-high-priority"
    assert metadata["namespace"] == "prod"
    assert metadata["labels"]["celery-operator.dev/queue"] == "high-priority"
    assert metadata["annotations"] == {"celery-operator.dev/queue-name": "high_priority"}
    assert deployment["spec"]["selector"] == {"matchLabels": {
        "app.kubernetes.io/instance": "shop", "app.kubernetes.io/component": "worker",
        "celery-operator.dev/queue": "high-priority",
    }}
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"] == metadata["labels"]
    assert template["metadata"]["annotations"] == {"celery-operator.dev/queue-name": "high_priority"}
    pod = template["spec"]
    assert pod["terminationGracePeriodSeconds"] == 300
    worker = container(deployment)
    assert worker["name"] == "worker"
    assert worker["image"] == "ghcr.io/acme/shop:1.4.2"
    assert worker["command"][:4] == ["celery", "-A", "myproject", "worker"]
    assert "args" not in worker
    assert "livenessProbe" not in worker and "readinessProbe" not in worker
    assert "imagePullPolicy" not in worker


def test_replicas_present_for_fixed_and_absent_for_autoscaled() -> None:
    spec = parse()
    autoscaled = build_worker_deployment(OWNER, spec, spec.queue("high_priority"))
    fixed = build_worker_deployment(OWNER, spec, spec.queue("low_priority"))
    assert "replicas" not in autoscaled["spec"]
    assert fixed["spec"]["replicas"] == 3


def test_fixed_queue_with_zero_replicas_keeps_the_zero() -> None:
    spec = parse(queues=[{"name": "paused", "replicas": 0}])
    assert build_worker_deployment(OWNER, spec, spec.queues[0])["spec"]["replicas"] == 0


def test_worker_pods_share_their_process_namespace_so_celery_is_not_pid_1() -> None:
    """A PID 1 without a SIGTERM handler yet ignores SIGTERM: a worker scaled away while it starts
    would run on and be killed mid-task at the end of its grace period."""
    spec = parse()
    for queue in spec.queues:
        assert build_worker_deployment(OWNER, spec, queue)["spec"]["template"]["spec"]["shareProcessNamespace"] is True


def test_worker_env_user_first_broker_last_and_user_broker_url_dropped() -> None:
    spec = parse(
        env=[{"name": "DJANGO_DEBUG", "value": "0"}, {"name": "CELERY_BROKER_URL", "value": "redis://sneaky"}],
        envFrom=[{"configMapRef": {"name": "shop-config"}}],
    )
    worker = container(build_worker_deployment(OWNER, spec, spec.queue("low_priority")))
    assert [e["name"] for e in worker["env"]] == ["DJANGO_DEBUG", "CELERY_BROKER_URL"]
    assert worker["env"][-1] == {"name": "CELERY_BROKER_URL", "valueFrom": {
        "secretKeyRef": {"name": "shop-broker", "key": "url"}}}
    assert worker["envFrom"] == [{"configMapRef": {"name": "shop-config"}}]


def test_result_backend_env_only_when_set() -> None:
    plain = parse()
    assert "CELERY_RESULT_BACKEND" not in env_by_name(container(
        build_worker_deployment(OWNER, plain, plain.queues[0])))

    by_url = parse(resultBackend={"url": "rpc://"})
    env = container(build_worker_deployment(OWNER, by_url, by_url.queues[0]))["env"]
    assert env[-2:] == [
        {"name": "CELERY_RESULT_BACKEND", "value": "rpc://"},
        {"name": "CELERY_BROKER_URL", "valueFrom": {"secretKeyRef": {"name": "shop-broker", "key": "url"}}},
    ]

    by_ref = parse(resultBackend={"urlSecretRef": {"name": "shop-results", "key": "url"}},
                   env=[{"name": "CELERY_RESULT_BACKEND", "value": "redis://old"}])
    env = container(build_worker_deployment(OWNER, by_ref, by_ref.queues[0]))["env"]
    assert [e["name"] for e in env] == ["CELERY_RESULT_BACKEND", "CELERY_BROKER_URL"]
    assert env[0]["valueFrom"] == {"secretKeyRef": {"name": "shop-results", "key": "url"}}


def test_worker_pod_settings_from_spec() -> None:
    spec = parse(
        imagePullPolicy="Always", imagePullSecrets=[{"name": "regcred"}], serviceAccountName="shop",
        workers={"terminationGracePeriodSeconds": 900, "resources": {"limits": {"memory": "1Gi"}}},
        pod={"annotations": {"team": "a", "celery-operator.dev/queue-name": "spoofed"},
             "labels": {"team": "payments", "app.kubernetes.io/component": "spoofed"},
             "nodeSelector": {"pool": "celery"}, "tolerations": [{"key": "celery", "operator": "Exists"}],
             "affinity": {"podAntiAffinity": {}}, "priorityClassName": "batch"},
    )
    deployment = build_worker_deployment(OWNER, spec, spec.queue("low_priority"))
    pod = deployment["spec"]["template"]["spec"]
    meta = deployment["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "payments"
    assert meta["labels"]["app.kubernetes.io/component"] == "worker"  # ours win
    assert meta["annotations"] == {"team": "a", "celery-operator.dev/queue-name": "low_priority"}
    assert "team" not in deployment["metadata"]["labels"]
    assert pod["serviceAccountName"] == pod["serviceAccount"] == "shop", "both, so a removal removes both"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["terminationGracePeriodSeconds"] == 900
    assert pod["nodeSelector"] == {"pool": "celery"}
    assert pod["tolerations"] == [{"key": "celery", "operator": "Exists"}]
    assert pod["affinity"] == {"podAntiAffinity": {}}
    assert pod["priorityClassName"] == "batch"
    worker = container(deployment)
    assert worker["imagePullPolicy"] == "Always"
    assert worker["resources"] == {"limits": {"memory": "1Gi"}}


def test_restricted_security_defaults() -> None:
    spec = parse()
    deployment = build_worker_deployment(OWNER, spec, spec.queues[0])
    assert deployment["spec"]["template"]["spec"]["securityContext"] == {
        "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container(deployment)["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
    }


def test_workers_write_only_to_an_empty_dir_at_tmp() -> None:
    spec = parse()
    deployment = build_worker_deployment(OWNER, spec, spec.queues[0])
    assert container(deployment)["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert deployment["spec"]["template"]["spec"]["volumes"] == [{"name": "tmp", "emptyDir": {}}]


def test_pod_security_context_replaces_the_default() -> None:
    spec = parse(pod={"securityContext": {"runAsUser": 0}})
    deployment = build_worker_deployment(OWNER, spec, spec.queues[0])
    assert deployment["spec"]["template"]["spec"]["securityContext"] == {"runAsUser": 0}
    assert container(deployment)["securityContext"]["allowPrivilegeEscalation"] is False


def test_manifests_do_not_alias_the_model() -> None:
    spec = parse(pod={"affinity": {"nodeAffinity": {"a": 1}}})
    deployment = build_worker_deployment(OWNER, spec, spec.queues[0])
    deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["a"] = 2
    assert spec.pod.affinity == {"nodeAffinity": {"a": 1}}


# --- the broker -------------------------------------------------------------------------------------


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_managed_broker_secret() -> None:
    secret = build_broker_secret(OWNER, parse().broker, password=PASSWORD)
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == "shop-broker"
    assert secret["type"] == "Opaque"
    assert "stringData" not in secret
    assert decoded(secret) == {
        "url": f"redis://:{PASSWORD}@shop-broker.prod.svc:6379/0",
        "password": PASSWORD,
    }


def test_managed_broker_url_escapes_the_password() -> None:
    assert managed_broker_url("shop", "prod", "a/b@c") == "redis://:a%2Fb%40c@shop-broker.prod.svc:6379/0"


def test_managed_broker_needs_a_password() -> None:
    with pytest.raises(ValueError):
        build_broker_secret(OWNER, parse().broker)


def test_external_url_broker_secret() -> None:
    spec = parse(broker={"url": "redis://redis.shared:6379/0"})
    assert decoded(build_broker_secret(OWNER, spec.broker)) == {"url": "redis://redis.shared:6379/0"}


def test_secret_ref_broker_secret_carries_the_url_read_by_the_reconciler() -> None:
    spec = parse(broker={"urlSecretRef": {"name": "ext", "key": "url"}})
    assert decoded(build_broker_secret(OWNER, spec.broker, external_url=EXTERNAL_URL)) == {
        "url": EXTERNAL_URL}
    with pytest.raises(ValueError):
        build_broker_secret(OWNER, spec.broker)


def test_decode_secret_value() -> None:
    secret = build_broker_secret(OWNER, parse().broker, password=PASSWORD)
    assert decode_secret_value(secret, "password") == PASSWORD
    assert decode_secret_value(secret, "missing") is None


def test_an_explicitly_ephemeral_managed_redis_keeps_nothing() -> None:
    spec = parse(broker={"managed": {"persistence": {"enabled": False}}})
    assert spec.broker.managed is not None
    manifests = by_key(build_managed_broker(OWNER, spec.broker.managed, IMAGES.redis))
    assert set(manifests) == {("Deployment", "shop-broker"), ("Service", "shop-broker")}
    deployment = manifests[("Deployment", "shop-broker")]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    redis = container(deployment)
    assert redis["image"] == "redis:7.4-alpine"
    assert redis["command"] == ["redis-server"]
    assert redis["args"] == [
        "--port", "6379", "--bind", "$(POD_IP)", "--requirepass", "$(REDIS_PASSWORD)",
        "--notify-keyspace-events", "Kl", "--save", "", "--appendonly", "no",
        "--maxmemory", str(256 * 1024 * 1024 * 80 // 100), "--maxmemory-policy", "noeviction",
    ]
    assert redis["resources"] == {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    assert env_by_name(redis) == {
        "POD_IP": {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        "REDIS_PASSWORD": {"name": "REDIS_PASSWORD", "valueFrom": {
            "secretKeyRef": {"name": "shop-broker", "key": "password"}}},
    }
    assert redis["readinessProbe"]["tcpSocket"] == {"port": "redis"}
    assert redis["livenessProbe"]["tcpSocket"] == {"port": "redis"}
    assert redis["ports"] == [{"name": "redis", "containerPort": 6379, "protocol": "TCP"}]
    assert redis["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    assert redis["securityContext"] == {
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "readOnlyRootFilesystem": True,
    }
    pod = deployment["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "data", "emptyDir": {}}]
    assert "terminationGracePeriodSeconds" not in pod, "Kubernetes' 30 s: Redis fsyncs and exits in milliseconds"
    assert pod["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 999, "runAsGroup": 999, "fsGroup": 999,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    service = manifests[("Service", "shop-broker")]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "redis", "port": 6379, "targetPort": "redis", "protocol": "TCP"}]
    assert service["spec"]["selector"] == {"app.kubernetes.io/instance": "shop", "app.kubernetes.io/component": "broker"}
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]


def test_the_default_managed_redis_keeps_an_append_only_file_on_a_1gi_claim() -> None:
    spec = parse()
    assert spec.broker.managed is not None
    manifests = by_key(build_managed_broker(OWNER, spec.broker.managed, IMAGES.redis))
    assert set(manifests) == {("Deployment", "shop-broker"), ("Service", "shop-broker"),
                              ("PersistentVolumeClaim", "shop-broker")}
    pvc = manifests[("PersistentVolumeClaim", "shop-broker")]
    assert pvc["spec"] == {"accessModes": ["ReadWriteOncePod"], "resources": {"requests": {"storage": "1Gi"}}}
    redis = container(manifests[("Deployment", "shop-broker")])
    args = redis["args"]
    assert args[args.index("--appendonly"):args.index("--appendonly") + 4] == [
        "--appendonly", "yes", "--appendfsync", "everysec"]
    assert args[args.index("--save") + 1] == "", "no RDB snapshots: the append-only file is the record"
    pod = manifests[("Deployment", "shop-broker")]["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": "shop-broker"}}]
    assert redis["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]


def test_managed_redis_with_persistence() -> None:
    spec = parse(broker={"managed": {"image": "redis:7.2", "resources": {"limits": {"memory": "256Mi"}},
                                     "persistence": {"size": "5Gi", "storageClassName": "fast"}}})
    assert spec.broker.managed is not None
    manifests = by_key(build_managed_broker(OWNER, spec.broker.managed, IMAGES.redis))
    pvc = manifests[("PersistentVolumeClaim", "shop-broker")]
    assert pvc["spec"] == {"accessModes": ["ReadWriteOncePod"], "resources": {"requests": {"storage": "5Gi"}},
                           "storageClassName": "fast"}
    deployment = manifests[("Deployment", "shop-broker")]
    redis = container(deployment)
    assert redis["image"] == "redis:7.2"
    assert redis["args"][-10:] == ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
                                   "--maxmemory", str(256 * 1024 * 1024 * 80 // 100), "--maxmemory-policy", "noeviction"]
    assert "--dir" not in redis["args"]
    assert redis["resources"] == {"limits": {"memory": "256Mi"}}
    assert deployment["spec"]["template"]["spec"]["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "shop-broker"}}]


def test_a_claim_for_storage_without_read_write_once_pod() -> None:
    spec = parse(broker={"managed": {"persistence": {"accessMode": "ReadWriteOnce"}}})
    assert spec.broker.managed is not None
    pvc = build_broker_pvc(OWNER, spec.broker.managed)
    assert pvc is not None and pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_a_claim_that_exists_keeps_its_access_modes_which_cannot_change() -> None:
    spec = parse()
    assert spec.broker.managed is not None
    made_before = {"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}
    pvc = build_broker_pvc(OWNER, spec.broker.managed, existing=made_before)
    assert pvc is not None and pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_pvc_without_storage_class_leaves_it_to_the_cluster() -> None:
    spec = parse(broker={"managed": {"persistence": {"size": "1Gi", "storageClassName": ""}}})
    assert spec.broker.managed is not None
    pvc = build_broker_pvc(OWNER, spec.broker.managed)
    assert pvc is not None and "storageClassName" not in pvc["spec"]


# --- Flower -------------------------------------------------------------------------------------------


def test_flower_only_when_enabled() -> None:
    assert build_flower(OWNER, parse(), IMAGES.flower) == []


def test_flower() -> None:
    spec = parse(flower={"enabled": True, "resources": {"requests": {"cpu": "50m"}}})
    manifests = by_key(build_flower(OWNER, spec, IMAGES.flower, password=FLOWER_PASSWORD))
    deployment = manifests[("Deployment", "shop-flower")]
    flower = container(deployment)
    assert flower["image"] == "mher/flower:2.0"
    assert flower["command"] == ["celery", "flower", "--port=5555", "--address=$(POD_IP)"]
    assert env_by_name(flower)["CELERY_BROKER_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "shop-broker", "key": "url"}}
    assert env_by_name(flower)["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert flower["readinessProbe"]["httpGet"] == {"path": "/healthcheck", "port": "http"}
    assert flower["resources"] == {"requests": {"cpu": "50m"}}
    assert flower["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    service = manifests[("Service", "shop-flower")]
    assert service["spec"]["ports"] == [{"name": "http", "port": 5555, "targetPort": "http", "protocol": "TCP"}]


# --- all children ---------------------------------------------------------------------------------------


def all_variants() -> list[tuple[TaskQueueSpec, dict[str, str]]]:
    return [
        (parse(flower={"enabled": True}, broker={"managed": {"persistence": {"size": "1Gi"}}}),
         {"broker_password": PASSWORD, "flower_password": FLOWER_PASSWORD}),
        (parse(broker={"urlSecretRef": {"name": "ext", "key": "url"}}, flower={"enabled": True}),
         {"external_broker_url": EXTERNAL_URL, "flower_password": FLOWER_PASSWORD}),
    ]


def test_desired_children_for_a_managed_broker() -> None:
    spec, arguments = all_variants()[0]
    children = builders.desired_children(OWNER, spec, images=IMAGES, **arguments)
    assert [child_key(c) for c in children] == [
        ("v1", "Secret", "shop-broker"),
        ("networking.k8s.io/v1", "NetworkPolicy", "shop-broker"),
        ("networking.k8s.io/v1", "NetworkPolicy", "shop-workers"),
        ("networking.k8s.io/v1", "NetworkPolicy", "shop-flower"),
        ("apps/v1", "Deployment", "shop-broker"),
        ("v1", "Service", "shop-broker"),
        ("v1", "PersistentVolumeClaim", "shop-broker"),
        ("apps/v1", "Deployment", "shop-worker-high-priority"),
        ("apps/v1", "Deployment", "shop-worker-low-priority"),
        ("v1", "Secret", "shop-flower"),
        ("apps/v1", "Deployment", "shop-flower"),
        ("v1", "Service", "shop-flower"),
    ]


def test_desired_children_for_an_external_broker_have_no_redis() -> None:
    spec, arguments = all_variants()[1]
    children = builders.desired_children(OWNER, spec, images=IMAGES, **arguments)
    names = {(c["kind"], c["metadata"]["name"]) for c in children}
    assert names == {("Secret", "shop-broker"), ("Deployment", "shop-worker-high-priority"),
                     ("Deployment", "shop-worker-low-priority"), ("Secret", "shop-flower"),
                     ("Deployment", "shop-flower"), ("Service", "shop-flower"),
                     ("NetworkPolicy", "shop-workers"), ("NetworkPolicy", "shop-flower")}


@pytest.mark.parametrize("variant", [0, 1])
def test_every_child_is_labelled_and_owned(variant: int) -> None:
    spec, arguments = all_variants()[variant]
    for child in builders.desired_children(OWNER, spec, images=IMAGES, **arguments):
        metadata = child["metadata"]
        assert metadata["namespace"] == "prod"
        assert metadata["ownerReferences"] == [{
            "apiVersion": "celery-operator.dev/v1alpha1", "kind": "TaskQueue", "name": "shop",
            "uid": OWNER.uid, "controller": True, "blockOwnerDeletion": True,
        }]
        labels = metadata["labels"]
        assert labels["app.kubernetes.io/name"] == "celery"
        assert labels["app.kubernetes.io/instance"] == "shop"
        assert labels["app.kubernetes.io/managed-by"] == "celery-operator"
        assert labels["app.kubernetes.io/component"] in {"broker", "worker", "flower"}
        if child["kind"] == "Deployment":
            template_labels = child["spec"]["template"]["metadata"]["labels"]
            assert child["spec"]["selector"]["matchLabels"].items() <= template_labels.items()
            assert labels.items() <= template_labels.items()
        if labels["app.kubernetes.io/component"] == "worker" and child["kind"] != "NetworkPolicy":  # one for all
            assert labels["celery-operator.dev/queue"] in {"high-priority", "low-priority"}


@pytest.mark.parametrize("variant", [0, 1])
def test_broker_url_and_password_appear_only_in_the_secret_data(variant: int) -> None:
    spec, arguments = all_variants()[variant]
    secrets = {PASSWORD, EXTERNAL_URL, "ext-pa55word", FLOWER_PASSWORD,
               managed_broker_url("shop", "prod", PASSWORD)}
    for child in builders.desired_children(OWNER, spec, images=IMAGES, **arguments):
        text = json.dumps(child)
        for secret in secrets:
            assert secret not in text, f"{secret!r} in plain text in {child['kind']} {child['metadata']['name']}"
        if child["kind"] == "Secret":
            assert set(child) == {"apiVersion", "kind", "metadata", "type", "data"}


def test_children_are_fresh_on_every_call() -> None:
    spec, arguments = all_variants()[0]
    first = builders.desired_children(OWNER, spec, images=IMAGES, **arguments)
    by_key(first)[("Deployment", "shop-worker-high-priority")]["spec"]["template"]["spec"]["containers"][0]["env"].clear()
    assert builders.desired_children(OWNER, spec, images=IMAGES, **arguments) != first


def test_all_container_commands_are_exec_form_without_a_shell() -> None:
    spec, arguments = all_variants()[0]
    for child in builders.desired_children(OWNER, spec, images=IMAGES, **arguments):
        if child["kind"] != "Deployment":
            continue
        for c in child["spec"]["template"]["spec"]["containers"]:
            assert c["command"][0] in {"celery", "redis-server"}
            assert not {"sh", "/bin/sh", "bash", "-c"} & set(c["command"])


def test_operator_wide_images_apply_unless_the_taskqueue_names_its_own() -> None:
    images = builders.DefaultImages(beat="local/operator:1", redis="local/redis:7", flower="local/flower:2")
    defaults = parse(flower={"enabled": True})
    own = parse(flower={"enabled": True, "image": "acme/flower:9"}, broker={"managed": {"image": "acme/redis:8"}})

    def images_of(spec: TaskQueueSpec) -> dict[str, str]:
        children = builders.desired_children(OWNER, spec, images=images, broker_password=PASSWORD,
                                             flower_password=FLOWER_PASSWORD)
        return {c["metadata"]["name"]: container(c)["image"] for c in children if c["kind"] == "Deployment"
                and c["metadata"]["name"] in ("shop-broker", "shop-flower")}

    assert images_of(defaults) == {"shop-broker": "local/redis:7", "shop-flower": "local/flower:2"}
    assert images_of(own) == {"shop-broker": "acme/redis:8", "shop-flower": "acme/flower:9"}


def test_naming_constants_match_children() -> None:
    spec, arguments = all_variants()[0]
    names = {c["metadata"]["name"] for c in builders.desired_children(OWNER, spec, images=IMAGES, **arguments)}
    assert naming.broker_name("shop") in names
    assert naming.flower_name("shop") in names
    assert naming.worker_name("shop", "high_priority") in names
