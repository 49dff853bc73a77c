"""Pure builders: parsed spec -> manifest dicts ready for server-side apply.

`desired_children` is the whole picture for one TaskQueue: the reconciler applies these and deletes
owned children of OWNED_KINDS that are no longer in the list (e.g. a removed queue's Deployment, or
the beat once no PeriodicJob refers to the TaskQueue). Whether a beat is wanted depends on the
PeriodicJobs, which the reconciler knows: it passes `beat` options, or None for no beat.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ..models import ObjectIdentity, TaskQueueSpec
from .beat import BeatOptions, beat_state_url, build_beat, build_beat_deployment, build_beat_state
from .broker import build_broker_deployment, build_broker_pvc, build_broker_service, build_managed_broker, redis_args
from .common import Manifest, restricted_container_security_context, restricted_pod_security_context
from .flower import build_flower, build_flower_deployment, build_flower_service, flower_command
from .secret import broker_url, build_broker_secret, decode_secret_value, managed_broker_url
from .worker import build_worker_deployment, build_worker_deployments, worker_command

ChildKey = tuple[str, str, str]  # (apiVersion, kind, name); the namespace is the owner's

# (apiVersion, kind) of every child type the operator creates; the beat is a Deployment too.
OWNED_KINDS: Final[tuple[tuple[str, str], ...]] = (
    ("v1", "Secret"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "PersistentVolumeClaim"),
)


def child_key(manifest: Mapping[str, Any]) -> ChildKey:
    return (manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"])


def desired_children(
    owner: ObjectIdentity,
    spec: TaskQueueSpec,
    *,
    broker_password: str | None = None,
    external_broker_url: str | None = None,
    beat: BeatOptions | None = None,
) -> list[Manifest]:
    """Every child the TaskQueue should have now, in a sensible apply order (Secret first).

    `broker_password` is required for a managed broker, `external_broker_url` for a urlSecretRef
    broker (the value read from the user's Secret); see `build_broker_secret`.
    """
    children = [
        build_broker_secret(owner, spec.broker, password=broker_password, external_url=external_broker_url)
    ]
    if spec.broker.managed is not None:
        children += build_managed_broker(owner, spec.broker.managed)
    children += build_worker_deployments(owner, spec)
    children += build_flower(owner, spec)
    children += build_beat(owner, spec, beat)
    return children


__all__ = [
    "OWNED_KINDS",
    "BeatOptions",
    "beat_state_url",
    "build_beat",
    "build_beat_deployment",
    "build_beat_state",
    "ChildKey",
    "Manifest",
    "broker_url",
    "build_broker_deployment",
    "build_broker_pvc",
    "build_broker_secret",
    "build_broker_service",
    "build_flower",
    "build_flower_deployment",
    "build_flower_service",
    "build_managed_broker",
    "build_worker_deployment",
    "build_worker_deployments",
    "child_key",
    "decode_secret_value",
    "desired_children",
    "flower_command",
    "managed_broker_url",
    "redis_args",
    "restricted_container_security_context",
    "restricted_pod_security_context",
    "worker_command",
]
