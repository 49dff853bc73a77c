"""The managed Redis broker: Deployment, Service and (unless persistence is turned off) a PVC, all `<tq>-broker`.

Durable by default: Redis keeps an append-only file on the claim, so a new broker pod (an edit, a
drained node, an operator upgrade) or a restarted container replays every message the old one held.
On SIGTERM redis-server fsyncs that file and exits within milliseconds: Kubernetes' default grace
period of 30 s covers it with room to spare, so the pod leaves it as it is (and an ephemeral broker's
manifest stays what it was before persistence became the default: an upgrade does not roll it).

Redis binds the pod IP rather than 0.0.0.0: on the local test cluster every pod shares the host
network with a loopback address of its own, so two brokers must not both claim 0.0.0.0:6379.
The password reaches redis-server through $(REDIS_PASSWORD) from the Secret, never in the manifest.

Memory: the broker gets requests and a memory limit by default, and Redis a `maxmemory` below that
limit (MAX_MEMORY_PERCENT of it, or broker.managed.maxMemory) with `maxmemory-policy noeviction`. A full
broker then answers writes with an OOM error (producers see it) and keeps every message it holds;
without it the kernel would OOM-kill Redis at the limit, and an emptyDir broker would lose its queues.
The rest of the limit is headroom for what `maxmemory` does not count (allocator fragmentation,
the fork of an AOF rewrite).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

from kubernetes.utils.quantity import parse_quantity

from .. import naming
from ..models import ManagedBroker, ObjectIdentity
from .common import (
    Manifest,
    POD_IP_ENV,
    cluster_ip_service,
    deployment,
    object_meta,
    pod_ip_env_var,
    restricted_container_security_context,
    secret_env_var,
)

REDIS_USER_ID: Final = 999  # the `redis` user of the official image
REDIS_PASSWORD_ENV: Final = "REDIS_PASSWORD"
DATA_VOLUME: Final = "data"
DATA_DIR: Final = "/data"  # the official image's working directory, where dump and AOF files go
DEFAULT_BROKER_RESOURCES: Final = {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
MAX_MEMORY_PERCENT: Final = 80  # of the container's memory limit, when broker.managed.maxMemory is not set


def broker_resources(managed: ManagedBroker) -> dict[str, Any]:
    """broker.managed.resources, or the default when it sets nothing (it replaces the default whole)."""
    return copy.deepcopy(dict(managed.resources or DEFAULT_BROKER_RESOURCES))


def broker_max_memory_bytes(managed: ManagedBroker) -> int | None:
    """Redis maxmemory: broker.managed.maxMemory, else MAX_MEMORY_PERCENT of the memory limit; None
    without either (Redis' own default: no limit)."""
    if managed.max_memory is not None:
        return int(parse_quantity(managed.max_memory))
    limit = (broker_resources(managed).get("limits") or {}).get("memory")
    if limit is None:
        return None
    return int(parse_quantity(limit) * MAX_MEMORY_PERCENT / 100)


def redis_args(persistent: bool, max_memory_bytes: int | None = None, on_claim: bool = False) -> list[str]:
    """`persistent`: an append-only file. `on_claim`: on a volume claim, where that file is the record:
    fsynced every second and no RDB snapshots beside it (each one forks)."""
    args = [
        "--port", str(naming.REDIS_PORT),
        "--bind", f"$({POD_IP_ENV})",
        "--requirepass", f"$({REDIS_PASSWORD_ENV})",
        # announce list writes, so the scaler wakes the moment a queue at zero gets a message
        "--notify-keyspace-events", "Kl",
    ]
    if persistent and on_claim:
        args += ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"]
    elif persistent:
        args += ["--appendonly", "yes"]
    else:
        args += ["--save", "", "--appendonly", "no"]
    if max_memory_bytes is not None:
        args += ["--maxmemory", str(max_memory_bytes), "--maxmemory-policy", "noeviction"]
    return args


def build_redis_deployment(
    owner: ObjectIdentity,
    *,
    image: str,
    resources: Mapping[str, Any],
    name: str,
    component: naming.Component,
    append_only: bool,
    claim_name: str | None = None,
    beat_role: str | None = None,
    max_memory_bytes: int | None = None,
) -> Manifest:
    """A password-protected Redis Deployment `name`; its password is key `password` of Secret `name`.

    `append_only` keeps an AOF in /data: on the claim `claim_name` when given (survives the pod),
    else on an emptyDir (survives container restarts within the pod).
    """
    probe = {"tcpSocket": {"port": "redis"}}
    container: dict[str, Any] = {
        "name": "redis",
        "image": image,
        "command": ["redis-server"],
        "args": redis_args(append_only, max_memory_bytes, on_claim=claim_name is not None),
        "env": [
            pod_ip_env_var(),
            secret_env_var(REDIS_PASSWORD_ENV, name, naming.BROKER_SECRET_PASSWORD_KEY),
        ],
        "ports": [{"name": "redis", "containerPort": naming.REDIS_PORT, "protocol": "TCP"}],
        "readinessProbe": {**probe, "periodSeconds": 2, "failureThreshold": 3},
        "livenessProbe": {**probe, "initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 6},
        "volumeMounts": [{"name": DATA_VOLUME, "mountPath": DATA_DIR}],
        "securityContext": restricted_container_security_context(read_only_root_filesystem=True),
    }
    if resources:
        container["resources"] = copy.deepcopy(dict(resources))
    volume: dict[str, Any] = {"name": DATA_VOLUME}
    if claim_name is not None:
        volume["persistentVolumeClaim"] = {"claimName": claim_name}
    else:
        volume["emptyDir"] = {}
    template = {
        "metadata": {"labels": naming.component_labels(owner.name, component, beat_role=beat_role)},
        "spec": {
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": REDIS_USER_ID,
                "runAsGroup": REDIS_USER_ID,
                "fsGroup": REDIS_USER_ID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [container],
            "volumes": [volume],
        },
    }
    # Recreate: two Redis pods on one PVC (or one broker address) must never overlap.
    return deployment(owner, name=name, component=component, template=template, replicas=1, recreate=True,
                      beat_role=beat_role)


def build_broker_deployment(owner: ObjectIdentity, managed: ManagedBroker, default_image: str) -> Manifest:
    name = naming.broker_name(owner.name)
    persistent = managed.persistence is not None
    return build_redis_deployment(owner, image=managed.image or default_image, resources=broker_resources(managed),
                                  name=name, component=naming.BROKER, append_only=persistent,
                                  claim_name=name if persistent else None,
                                  max_memory_bytes=broker_max_memory_bytes(managed))


def build_broker_service(owner: ObjectIdentity) -> Manifest:
    return cluster_ip_service(
        owner, name=naming.broker_name(owner.name), component=naming.BROKER, port=naming.REDIS_PORT, port_name="redis"
    )


def build_broker_pvc(owner: ObjectIdentity, managed: ManagedBroker,
                     existing: Mapping[str, Any] | None = None) -> Manifest | None:
    """The data volume, or None when persistence is turned off (the broker uses an emptyDir).

    ReadWriteOncePod (the default access mode): the scheduler places no second pod on the claim while one still uses it, so a
    deleted or evicted broker pod's replacement starts only once the old Redis has exited (a
    ReplicaSet replaces a pod the moment it is marked for deletion; with ReadWriteOnce both would
    share the claim for a moment, and the writes the old one took after the new one replayed the
    file would be lost). `accessMode: ReadWriteOnce` is for storage that cannot do that, at that
    cost. A claim's access modes cannot change: an `existing` claim keeps its own.
    """
    if managed.persistence is None:
        return None
    live_modes = ((existing or {}).get("spec") or {}).get("accessModes")
    spec: dict[str, Any] = {
        "accessModes": list(live_modes or [managed.persistence.access_mode]),
        "resources": {"requests": {"storage": managed.persistence.size}},
    }
    if managed.persistence.storage_class_name:
        spec["storageClassName"] = managed.persistence.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": object_meta(owner, naming.broker_name(owner.name), naming.BROKER),
        "spec": spec,
    }


def build_managed_broker(owner: ObjectIdentity, managed: ManagedBroker, default_image: str,
                         existing_claim: Mapping[str, Any] | None = None) -> list[Manifest]:
    """Deployment, Service and, unless persistence is turned off, the PVC of the managed Redis
    (`existing_claim`: the live one, whose access modes stay)."""
    manifests = [build_broker_deployment(owner, managed, default_image), build_broker_service(owner)]
    pvc = build_broker_pvc(owner, managed, existing_claim)
    if pvc is not None:
        manifests.append(pvc)
    return manifests
