"""The children an operator version builds for a fixed set of TaskQueues, as JSON: what an upgrade
compares. The reconciler itself builds them (one pass against the fakes of its ports), so the
figures are the ones a cluster would get.

    python tests/release/manifests.py <commit> > tests/release/previous.json     # a release's tree

run with PYTHONPATH=<tree>:<tree>/operator for the tree to read (the previous release's, checked
out with `git worktree add`); `tests/unit/test_release.py` compares the current tree's with the
recorded ones of the previous release, against CHANGELOG.md.
"""

from __future__ import annotations

import itertools
import json
import secrets
import sys
from collections.abc import Mapping
from typing import Any

# Specs that reach every builder, each valid in every release compared: the example (a managed
# broker as the spec leaves it, an autoscaled and a fixed queue, a PeriodicJob), Flower with a
# generated login on a broker with explicit persistence, and an AMQP broker whose beat keeps its
# state in a Redis of its own.
EXAMPLE: dict[str, Any] = {
    "image": "ghcr.io/celery-operator/sample-app:0.1.0", "app": "myproject", "broker": {"managed": {}},
    "workers": {"concurrency": 2, "terminationGracePeriodSeconds": 120},
    "queues": [{"name": "high_priority", "autoscaling": {"minReplicas": 0, "maxReplicas": 10}},
               {"name": "low_priority", "replicas": 1}],
}
SPECS: dict[str, tuple[dict[str, Any], bool]] = {  # name -> (spec, a PeriodicJob refers to it)
    "example": (EXAMPLE, True),
    "flower": ({**EXAMPLE, "flower": {"enabled": True},
                "broker": {"managed": {"persistence": {"size": "2Gi", "storageClassName": "fast"}}}}, False),
    "amqp": ({**EXAMPLE, "broker": {"url": "amqp://rabbitmq.shared:5672//"}}, True),
}


def _deterministic_secrets() -> None:
    counter = itertools.count()
    secrets.token_urlsafe = lambda nbytes=None: f"password-{next(counter)}"  # type: ignore[assignment]


def build(name: str, spec: Mapping[str, Any], with_job: bool) -> dict[str, Any]:
    from celery_operator import reconcile
    from tests.controllers.fakes import fake_runtime

    runtime = fake_runtime()
    kube = runtime.kube
    body = kube.create_custom({"apiVersion": "celery-operator.dev/v1alpha1", "kind": "TaskQueue",  # type: ignore[attr-defined]
                               "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
                               "spec": json.loads(json.dumps(spec))})
    jobs = [{"apiVersion": "celery-operator.dev/v1alpha1", "kind": "PeriodicJob",
             "metadata": {"name": "tick", "namespace": "ns", "uid": "pj-1", "generation": 1},
             "spec": {"taskQueueRef": {"name": name}, "task": "myproject.tasks.tick", "interval": "2s"}}] if with_job else []
    reconcile.reconcile_taskqueue(runtime, body, [], jobs)
    children = kube.children_of(body["metadata"]["uid"])  # type: ignore[attr-defined]
    return {f"{child['kind']}/{child['metadata']['name']}": _as_applied(child) for child in children}


def _as_applied(child: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest as the reconciler applied it: what the fake server added left out."""
    body = json.loads(json.dumps(child))
    for key in ("uid", "generation", "managedFields", "resourceVersion", "creationTimestamp"):
        body["metadata"].pop(key, None)
    body.pop("status", None)
    return body


def every_manifest() -> dict[str, dict[str, Any]]:
    _deterministic_secrets()
    return {name: build(name, spec, with_job) for name, (spec, with_job) in SPECS.items()}


if __name__ == "__main__":
    from celery_operator import __version__

    commit = sys.argv[1] if len(sys.argv) > 1 else ""
    json.dump({"version": __version__, "commit": commit, "taskqueues": every_manifest()}, sys.stdout, indent=1,
              sort_keys=True)
    sys.stdout.write("\n")
