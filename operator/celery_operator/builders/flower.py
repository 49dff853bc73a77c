"""Flower, when spec.flower.enabled: Deployment and Service `<tq>-flower` on port 5555.

Flower needs no app code: `celery flower` without -A reads the broker from CELERY_BROKER_URL.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from .. import naming
from ..models import ObjectIdentity, TaskQueueSpec
from .common import (
    POD_IP_ENV,
    Manifest,
    broker_url_env_var,
    celery_pod_template,
    cluster_ip_service,
    deployment,
    pod_ip_env_var,
    restricted_container_security_context,
)

FLOWER_USER_ID: Final = 1000  # the `flower` user of the mher/flower image, named (not numbered) in its USER


def flower_command() -> list[str]:
    return ["celery", "flower", f"--port={naming.FLOWER_PORT}", f"--address=$({POD_IP_ENV})"]


def build_flower_deployment(owner: ObjectIdentity, spec: TaskQueueSpec, default_image: str) -> Manifest:
    flower = spec.flower
    container: dict[str, Any] = {
        "name": "flower",
        "image": flower.image or default_image,
        "command": flower_command(),
        "env": [pod_ip_env_var(), broker_url_env_var(owner.name)],
        "ports": [{"name": "http", "containerPort": naming.FLOWER_PORT, "protocol": "TCP"}],
        "readinessProbe": {
            "httpGet": {"path": "/healthcheck", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        "securityContext": restricted_container_security_context(),
    }
    if flower.resources:
        container["resources"] = copy.deepcopy(dict(flower.resources))
    # runAsNonRoot cannot verify a named USER, so the default names the image's user by id.
    default_security_context = {
        "runAsNonRoot": True,
        "runAsUser": FLOWER_USER_ID,
        "runAsGroup": FLOWER_USER_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    template = celery_pod_template(
        spec,
        owner=owner,
        component=naming.FLOWER,
        containers=[container],
        default_security_context=default_security_context,
    )
    template["spec"]["enableServiceLinks"] = False  # Flower reads FLOWER_* variables; keep Service env out
    return deployment(
        owner, name=naming.flower_name(owner.name), component=naming.FLOWER, template=template, replicas=1
    )


def build_flower_service(owner: ObjectIdentity) -> Manifest:
    return cluster_ip_service(
        owner, name=naming.flower_name(owner.name), component=naming.FLOWER, port=naming.FLOWER_PORT, port_name="http"
    )


def build_flower(owner: ObjectIdentity, spec: TaskQueueSpec, default_image: str) -> list[Manifest]:
    """Deployment and Service when Flower is enabled, else nothing."""
    if not spec.flower.enabled:
        return []
    return [build_flower_deployment(owner, spec, default_image), build_flower_service(owner)]
