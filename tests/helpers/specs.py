"""A TaskQueue spec with every field a user can remove set, for the removal tests of every tier."""

from __future__ import annotations

import copy
from typing import Any

_REMOVABLE: dict[str, Any] = {
    "serviceAccountName": "shop-app",
    "env": [{"name": "FOO", "value": "1"}, {"name": "KEEP", "value": "2"}],
    "envFrom": [{"configMapRef": {"name": "shop-config", "optional": True}}],
    "pod": {
        "labels": {"team": "blue"},
        "annotations": {"cost-centre": "42"},
        # no node has these: on a cluster the Celery pods stay Pending, only the manifests are at stake
        "nodeSelector": {"disk": "ssd"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "celery", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["nowhere"]}]}]}}},
    },
    "broker": {"managed": {"resources": {"requests": {"memory": "64Mi"}}, "maxMemory": "48Mi"}},
    "workers": {"resources": {"requests": {"cpu": "100m"}}, "extraArgs": ["--max-memory-per-child", "200000"]},
    "beat": {"scheduler": "myproject.schedulers:Nothing", "resources": {"requests": {"cpu": "10m"}}},
    "flower": {"enabled": True, "resources": {"requests": {"cpu": "20m"}},
               "env": [{"name": "FLOWER_PURGE_OFFLINE_WORKERS", "value": "60"}], "extraArgs": ["--max_tasks=5000"],
               "allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "ops"}}}]},
}
# queue a takes the workers' defaults, queue b overrides some of them
QUEUES: list[dict[str, Any]] = [
    {"name": "a", "replicas": 0},
    {"name": "b", "replicas": 0, "concurrency": 8, "resources": {"limits": {"memory": "256Mi"}},
     "extraArgs": ["-O", "fair"]},
]


def every_removable_field() -> dict[str, Any]:
    """The optional part of the spec (image, app and queues are the caller's); a fresh copy."""
    return copy.deepcopy(_REMOVABLE)
