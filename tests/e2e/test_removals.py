"""An edit that only removes something reaches the children built from it, and nothing else
changes: a TaskQueue with every removable field set is re-applied with `kubectl apply`, one
field fewer each time, as a user edits their YAML."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.helpers.specs import QUEUES, every_removable_field
from tests.helpers.taskqueues import TaskQueues, taskqueue
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.e2e

NAME = "rm"

WORKER_A, WORKER_B = "Deployment/rm-worker-a", "Deployment/rm-worker-b"
WORKERS = {WORKER_A, WORKER_B}
BEAT, FLOWER, BROKER = "Deployment/rm-beat", "Deployment/rm-flower", "Deployment/rm-broker"
POD_TEMPLATE_USERS = WORKERS | {BEAT, FLOWER}
# the controllers' own bookkeeping, not ours
SERVER_ANNOTATIONS = ("deployment.kubernetes.io/revision",)

Child = dict[str, Any]


def _pod(child: Child) -> dict[str, Any]:
    return child["spec"]["template"]["spec"]


def _container(child: Child) -> dict[str, Any]:
    return _pod(child)["containers"][0]


def _default_resources(child: Child) -> bool:
    """The container's resources are the builder's default (requests only, or the broker's with its limit)."""
    resources = _container(child).get("resources") or {}
    return resources.get("requests", {}).get("cpu") in {"10m", "50m"} and "memory" in resources.get("requests", {})


def _maxmemory(child: Child) -> str:
    args = _container(child)["args"]
    return args[args.index("--maxmemory") + 1]


def _env_names(child: Child) -> set[str]:
    return {item["name"] for item in _container(child).get("env", [])}


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def edit(spec: dict[str, Any]) -> None:
        node = spec
        for part in parents:
            node = node[part]
        del node[last]

    return edit


def _drop_foo(spec: dict[str, Any]) -> None:
    spec["env"] = [item for item in spec["env"] if item["name"] != "FOO"]


def _drop_queue_overrides(spec: dict[str, Any]) -> None:
    spec["queues"][1] = {"name": "b", "replicas": 0}


# (what the user removes, the edit, the children it must reach, what each of them shows afterwards)
STEPS: list[tuple[str, Callable[[dict[str, Any]], None], set[str], Callable[[str, Child], bool]]] = [
    ("one env var", _drop_foo, WORKERS | {BEAT},
     lambda _, c: _env_names(c) >= {"KEEP"} and "FOO" not in _env_names(c)),
    ("envFrom", _drop("envFrom"), WORKERS | {BEAT}, lambda _, c: "envFrom" not in _container(c)),
    ("pod.labels", _drop("pod.labels"), POD_TEMPLATE_USERS,
     lambda _, c: "team" not in c["spec"]["template"]["metadata"]["labels"]),
    ("pod.annotations", _drop("pod.annotations"), POD_TEMPLATE_USERS,
     lambda _, c: "cost-centre" not in (c["spec"]["template"]["metadata"].get("annotations") or {})),
    ("pod.tolerations", _drop("pod.tolerations"), POD_TEMPLATE_USERS, lambda _, c: "tolerations" not in _pod(c)),
    ("serviceAccountName", _drop("serviceAccountName"), POD_TEMPLATE_USERS,
     lambda _, c: not {"serviceAccountName", "serviceAccount"} & set(_pod(c))
     and _pod(c)["automountServiceAccountToken"] is False),
    ("workers.resources", _drop("workers.resources"), {WORKER_A}, lambda _, c: _default_resources(c)),
    ("workers.extraArgs", _drop("workers.extraArgs"), {WORKER_A},
     lambda _, c: "--max-memory-per-child" not in _container(c)["command"]),
    ("a whole queue's overrides", _drop_queue_overrides, {WORKER_B},
     lambda _, c: _default_resources(c) and "fair" not in _container(c)["command"]
     and _container(c)["command"][_container(c)["command"].index("--concurrency") + 1] == "2"),
    ("broker.managed.resources", _drop("broker.managed.resources"), {BROKER},
     lambda _, c: _container(c)["resources"]["limits"] == {"memory": "256Mi"}),
    ("broker.managed.maxMemory", _drop("broker.managed.maxMemory"), {BROKER},
     lambda _, c: _maxmemory(c) == str(256 * 1024 * 1024 * 80 // 100)),
    ("beat.resources", _drop("beat.resources"), {BEAT}, lambda _, c: _default_resources(c)),
    ("flower.resources", _drop("flower.resources"), {FLOWER}, lambda _, c: _default_resources(c)),
    ("flower.env", _drop("flower.env"), {FLOWER}, lambda _, c: "FLOWER_PURGE_OFFLINE_WORKERS" not in _env_names(c)),
    ("flower.extraArgs", _drop("flower.extraArgs"), {FLOWER},
     lambda _, c: "--max_tasks=5000" not in _container(c)["command"]),
    ("pod.nodeSelector", _drop("pod.nodeSelector"), POD_TEMPLATE_USERS, lambda _, c: "nodeSelector" not in _pod(c)),
    ("pod.affinity", _drop("pod.affinity"), POD_TEMPLATE_USERS, lambda _, c: "affinity" not in _pod(c)),
]


def _children(tqs: TaskQueues) -> dict[str, Child]:
    """Every child of the TaskQueue as the API returns it (camelCase JSON)."""
    selector = f"app.kubernetes.io/instance={NAME},app.kubernetes.io/managed-by=celery-operator"
    found: dict[str, Child] = {}
    for kind, listing in (("Deployment", tqs.apps.list_namespaced_deployment),
                          ("Service", tqs.core.list_namespaced_service),
                          ("Secret", tqs.core.list_namespaced_secret)):
        raw = listing(tqs.namespace, label_selector=selector, _preload_content=False)
        for item in json.loads(raw.data)["items"]:
            found[f"{kind}/{item['metadata']['name']}"] = item
    return found


def _fingerprint(child: Child) -> str:
    """What the operator writes of a child (status and server bookkeeping left out)."""
    metadata = child["metadata"]
    annotations = {k: v for k, v in (metadata.get("annotations") or {}).items() if k not in SERVER_ANNOTATIONS}
    return json.dumps({"labels": metadata.get("labels"), "annotations": annotations, "spec": child.get("spec"),
                       "data": child.get("data")}, sort_keys=True)


def _pass_done(tqs: TaskQueues) -> bool:
    body = tqs.get(NAME)
    return body.get("status", {}).get("observedGeneration") == body["metadata"]["generation"]


def test_each_removal_reaches_its_children_and_nothing_else(tqs: TaskQueues) -> None:
    spec = {**every_removable_field(), "queues": copy.deepcopy(QUEUES)}
    tqs.apply(taskqueue(NAME, **spec))
    wait_for(lambda: len(_children(tqs)) == 9 and _pass_done(tqs), 60, "every child of the full spec")
    before = {key: _fingerprint(child) for key, child in _children(tqs).items()}

    for removed, edit, expected, shows_removal in STEPS:
        edit(spec)
        tqs.apply(taskqueue(NAME, **spec))

        def reached() -> dict[str, Child] | None:
            children = _children(tqs)
            done = all(key in children and shows_removal(key, children[key]) for key in expected)
            return children if done and _pass_done(tqs) else None

        children = wait_for(reached, 30, f"the removal of {removed} to reach {sorted(expected)}")
        after = {key: _fingerprint(child) for key, child in children.items()}
        changed = {key for key in after if after[key] != before.get(key)}
        assert changed == expected, f"removing {removed} changed {sorted(changed)}, expected {sorted(expected)}"
        before = after

    del spec["flower"]
    tqs.apply(taskqueue(NAME, **spec))
    flowers = (FLOWER, "Service/rm-flower", "Secret/rm-flower")  # the Secret: its generated login
    children = wait_for(lambda: (c := _children(tqs)) and not set(flowers) & set(c)
                        and _pass_done(tqs) and c, 30, "Flower's Deployment, Service and Secret to go")
    after = {key: _fingerprint(child) for key, child in children.items()}
    assert after == {key: value for key, value in before.items() if key not in flowers}
