"""Pieces every builder shares: metadata with ownership, security contexts, the broker env var,
and the pod template of a Celery pod (worker, beat, flower).

All functions are pure and return fresh dicts: passthrough values from the spec are deep-copied so a
manifest never aliases the model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .. import naming
from ..models import ObjectIdentity, PodOverrides, ResultBackendSpec, TaskQueueSpec

Manifest = dict[str, Any]

BROKER_URL_ENV: Final = naming.BROKER_URL_ENV
RESULT_BACKEND_ENV: Final = naming.RESULT_BACKEND_ENV
POD_IP_ENV: Final = "POD_IP"


# Requests (no limits) where a spec's `resources` is empty: the pods are Burstable, not BestEffort (the
# first evicted under node pressure), and the scheduler counts them; a spec's `resources` replaces these
# as a whole. Small, so that a laptop cluster still fits many workers.
DEFAULT_WORKER_RESOURCES: Final = {"requests": {"cpu": "50m", "memory": "128Mi"}}
DEFAULT_BEAT_RESOURCES: Final = {"requests": {"cpu": "10m", "memory": "64Mi"}}
# The operator's own beat is our code, ~80 MB at work: a limit well above that only stops a leak.
# A custom scheduler runs the user's app (DEFAULT_BEAT_RESOURCES, no limit: its size is theirs).
OWN_BEAT_RESOURCES: Final = {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
# Flower keeps at most its max_tasks (10000) tasks in memory; an OOM kill loses only its view.
DEFAULT_FLOWER_RESOURCES: Final = {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}}


def resources_or_default(resources: Mapping[str, Any], default: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's resources when it sets any, else the default: a copy either way."""
    return copy.deepcopy(dict(resources or default))


@dataclass(frozen=True)
class DefaultImages:
    """The images the operator runs where a TaskQueue names none (the operator's settings)."""

    beat: str  # the operator's own image, which runs `python -m celery_operator.beat`
    redis: str  # the managed broker and the beat-state Redis
    flower: str


def object_meta(
    owner: ObjectIdentity,
    name: str,
    component: naming.Component,
    queue: str | None = None,
    annotations: Mapping[str, str] | None = None,
    beat_role: str | None = None,
) -> dict[str, Any]:
    """metadata of a child: name, namespace, our labels, a controller ownerReference."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": naming.component_labels(owner.name, component, queue, beat_role),
    }
    if queue is not None:
        meta["annotations"] = {**(annotations or {}), **naming.queue_annotations(queue)}
    elif annotations:
        meta["annotations"] = dict(annotations)
    meta["ownerReferences"] = [owner.owner_reference()]
    return meta


def restricted_pod_security_context() -> dict[str, Any]:
    """The pod-level part of the `restricted` Pod Security Standard."""
    return {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def restricted_container_security_context(read_only_root_filesystem: bool = False) -> dict[str, Any]:
    """The container-level part of the `restricted` Pod Security Standard."""
    context: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    if read_only_root_filesystem:
        context["readOnlyRootFilesystem"] = True
    return context


def celery_pod_security_context(pod: PodOverrides, default: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """spec.pod.securityContext replaces the default as a whole; there is no field-by-field merge."""
    if pod.security_context is not None:
        return copy.deepcopy(dict(pod.security_context))
    return copy.deepcopy(dict(default)) if default is not None else restricted_pod_security_context()


def secret_env_var(env_name: str, secret_name: str, key: str) -> dict[str, Any]:
    return {"name": env_name, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}


def broker_url_env_var(taskqueue: str) -> dict[str, Any]:
    """CELERY_BROKER_URL from the `<tq>-broker` Secret.

    Celery reads this variable before the app's own configuration, so it overrides e.g. a Django
    project's CELERY_BROKER_URL setting, and the URL never appears in a manifest or command line.
    """
    return secret_env_var(BROKER_URL_ENV, naming.broker_name(taskqueue), naming.BROKER_SECRET_URL_KEY)


def result_backend_env_var(result_backend: ResultBackendSpec) -> dict[str, Any]:
    if result_backend.url_secret_ref is not None:
        ref = result_backend.url_secret_ref
        return secret_env_var(RESULT_BACKEND_ENV, ref.name, ref.key)
    return {"name": RESULT_BACKEND_ENV, "value": result_backend.url}


def pod_ip_env_var() -> dict[str, Any]:
    return {"name": POD_IP_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def celery_env(spec: TaskQueueSpec, taskqueue: str) -> list[dict[str, Any]]:
    """The user's env, then the operator's variables, which replace user entries of the same name.

    Duplicate names would also break server-side apply (env is a list keyed by name).
    """
    operator_env = []
    if spec.result_backend is not None:
        operator_env.append(result_backend_env_var(spec.result_backend))
    operator_env.append(broker_url_env_var(taskqueue))
    reserved = {item["name"] for item in operator_env}
    user_env = [copy.deepcopy(dict(item)) for item in spec.env if item.get("name") not in reserved]
    return user_env + operator_env


TMP_VOLUME: Final = "tmp"


def _mounts_tmp(containers: Sequence[Mapping[str, Any]]) -> bool:
    return any(m.get("name") == TMP_VOLUME for c in containers for m in c.get("volumeMounts", []))


def celery_container(
    spec: TaskQueueSpec,
    *,
    taskqueue: str,
    name: str,
    command: Sequence[str],
    resources: Mapping[str, Any],
) -> dict[str, Any]:
    """A container running the user's image with the user's env and the broker URL; `resources`
    are the effective ones (the spec's or a default)."""
    container: dict[str, Any] = {"name": name, "image": spec.image}
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    container["command"] = list(command)
    container["env"] = celery_env(spec, taskqueue)
    if spec.env_from:
        container["envFrom"] = [copy.deepcopy(dict(item)) for item in spec.env_from]
    if resources:
        container["resources"] = copy.deepcopy(dict(resources))
    # a read-only image, with /tmp (an emptyDir) for what Celery and the app write at run time
    container["securityContext"] = restricted_container_security_context(read_only_root_filesystem=True)
    container["volumeMounts"] = [{"name": TMP_VOLUME, "mountPath": "/tmp"}]
    return container


def celery_pod_template(
    spec: TaskQueueSpec,
    *,
    owner: ObjectIdentity,
    component: naming.Component,
    containers: Sequence[Mapping[str, Any]],
    queue: str | None = None,
    termination_grace_period_seconds: int | None = None,
    default_security_context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The pod template of a Celery pod, with spec.pod merged in (our labels and annotations win)."""
    pod = spec.pod
    labels = {**pod.labels, **naming.component_labels(owner.name, component, queue)}
    annotations = dict(pod.annotations)
    if queue is not None:
        annotations.update(naming.queue_annotations(queue))
    metadata: dict[str, Any] = {"labels": labels}
    if annotations:
        metadata["annotations"] = annotations

    pod_spec: dict[str, Any] = {}
    if spec.service_account_name:
        # and its deprecated alias, which the API server fills in from it: owning both is what lets a
        # removal of spec.serviceAccountName remove them (else the alias restores the name)
        pod_spec["serviceAccountName"] = pod_spec["serviceAccount"] = spec.service_account_name
    else:
        # Celery needs no API token; a named ServiceAccount says the app does, and its own
        # automountServiceAccountToken then decides
        pod_spec["automountServiceAccountToken"] = False
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [copy.deepcopy(dict(s)) for s in spec.image_pull_secrets]
    if termination_grace_period_seconds is not None:
        pod_spec["terminationGracePeriodSeconds"] = termination_grace_period_seconds
    pod_spec["securityContext"] = celery_pod_security_context(pod, default_security_context)
    if pod.node_selector:
        pod_spec["nodeSelector"] = dict(pod.node_selector)
    if pod.tolerations:
        pod_spec["tolerations"] = [copy.deepcopy(dict(t)) for t in pod.tolerations]
    if pod.affinity:
        pod_spec["affinity"] = copy.deepcopy(dict(pod.affinity))
    if pod.priority_class_name:
        pod_spec["priorityClassName"] = pod.priority_class_name
    pod_spec["containers"] = [copy.deepcopy(dict(c)) for c in containers]
    if _mounts_tmp(containers):
        pod_spec["volumes"] = [{"name": TMP_VOLUME, "emptyDir": {}}]
    return {"metadata": metadata, "spec": pod_spec}


def deployment(
    owner: ObjectIdentity,
    *,
    name: str,
    component: naming.Component,
    template: Mapping[str, Any],
    replicas: int | None,
    queue: str | None = None,
    recreate: bool = False,
    beat_role: str | None = None,
) -> Manifest:
    """A Deployment; `replicas=None` leaves the field to another manager (the scaler)."""
    deployment_spec: dict[str, Any] = {}
    if replicas is not None:
        deployment_spec["replicas"] = replicas
    deployment_spec["selector"] = {"matchLabels": naming.selector_labels(owner.name, component, queue, beat_role)}
    if recreate:
        deployment_spec["strategy"] = {"type": "Recreate"}
    deployment_spec["template"] = copy.deepcopy(dict(template))
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(owner, name, component, queue, beat_role=beat_role),
        "spec": deployment_spec,
    }


def cluster_ip_service(
    owner: ObjectIdentity, *, name: str, component: naming.Component, port: int, port_name: str,
    beat_role: str | None = None,
) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(owner, name, component, beat_role=beat_role),
        "spec": {
            "type": "ClusterIP",
            "selector": naming.selector_labels(owner.name, component, beat_role=beat_role),
            "ports": [{"name": port_name, "port": port, "targetPort": port_name, "protocol": "TCP"}],
        },
    }
