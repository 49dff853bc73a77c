"""When a live child differs from what the reconciler would apply (drift.py): a removal from the
spec reaches exactly the children built from that field, a settled child is never rewritten, and
an edit of a field the reconciler sets is seen."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from celery_operator import builders, drift, naming
from celery_operator.builders.beat import BeatOptions
from celery_operator.models import ObjectIdentity, parse_taskqueue_spec
from tests.helpers.specs import QUEUES, every_removable_field

pytestmark = pytest.mark.unit

OWNER = ObjectIdentity(name="shop", namespace="prod", uid="u-1", generation=4)
PASSWORD = "not-a-real-password-0123456789"
IMAGES = builders.DefaultImages(beat="operator:1", redis="redis:7.4-alpine", flower="mher/flower:2.0")

EVERYTHING: dict[str, Any] = {"image": "ghcr.io/acme/shop:1.4.2", "app": "myproject", **every_removable_field(),
                              "queues": QUEUES}

WORKERS = {"Deployment/shop-worker-a", "Deployment/shop-worker-b"}
BEAT = {"Deployment/shop-beat"}
FLOWER = {"Deployment/shop-flower"}
POD_TEMPLATE_USERS = WORKERS | BEAT | FLOWER


def _key(manifest: dict[str, Any]) -> str:
    return f"{manifest['kind']}/{manifest['metadata']['name']}"


def _children(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    parsed = parse_taskqueue_spec(spec)
    beat = BeatOptions(custom=True) if parsed.beat.custom_scheduler else None
    children = builders.desired_children(OWNER, parsed, images=IMAGES, broker_password=PASSWORD, beat=beat,
                                         flower_password="flower-password")
    return {_key(m): drift.stamped(m) for m in children}


def _as_served(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the API server returns after the apply: the manifest plus fields of its own."""
    live = copy.deepcopy(manifest)
    live["metadata"].update(uid="child-uid", resourceVersion="812", generation=2,
                            creationTimestamp="2026-11-24T08:00:00Z",
                            managedFields=[{"manager": naming.FIELD_MANAGER, "operation": "Apply"}])
    live["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "3"
    if manifest["kind"] == "Deployment":
        live["spec"].update(revisionHistoryLimit=10, progressDeadlineSeconds=600)
        pod = live["spec"]["template"]["spec"]
        pod.update(restartPolicy="Always", dnsPolicy="ClusterFirst", schedulerName="default-scheduler")
        for container in pod["containers"]:
            container.update(terminationMessagePath="/dev/termination-log", imagePullPolicy="IfNotPresent")
        live["status"] = {"replicas": 1, "readyReplicas": 1, "observedGeneration": 2}
    if manifest["kind"] == "Service":
        live["spec"].update(clusterIP="10.96.0.12", sessionAffinity="None")
    return live


def _without(path: str) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def remove(spec: dict[str, Any]) -> None:
        node: Any = spec
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[int(last) if last.isdigit() else last]

    return remove


def _without_queue_overrides(spec: dict[str, Any]) -> None:
    spec["queues"][1] = {"name": "b", "replicas": 0}


REMOVALS = {
    "env": (_without("env"), WORKERS | BEAT),
    "one env var": (lambda spec: spec["env"].pop(0), WORKERS | BEAT),
    "envFrom": (_without("envFrom"), WORKERS | BEAT),
    "pod.labels": (_without("pod.labels"), POD_TEMPLATE_USERS),
    "pod.annotations": (_without("pod.annotations"), POD_TEMPLATE_USERS),
    "pod.nodeSelector": (_without("pod.nodeSelector"), POD_TEMPLATE_USERS),
    "pod.tolerations": (_without("pod.tolerations"), POD_TEMPLATE_USERS),
    "pod.affinity": (_without("pod.affinity"), POD_TEMPLATE_USERS),
    "serviceAccountName": (_without("serviceAccountName"), POD_TEMPLATE_USERS),
    "workers.resources": (_without("workers.resources"), {"Deployment/shop-worker-a"}),
    "workers.extraArgs": (_without("workers.extraArgs"), {"Deployment/shop-worker-a"}),
    "a whole queue's overrides": (_without_queue_overrides, {"Deployment/shop-worker-b"}),
    "broker.managed.resources": (_without("broker.managed.resources"), {"Deployment/shop-broker"}),
    "beat.resources": (_without("beat.resources"), BEAT),
    "flower.resources": (_without("flower.resources"), FLOWER),
    "flower.env": (_without("flower.env"), FLOWER),
    "flower.extraArgs": (_without("flower.extraArgs"), FLOWER),
    "broker.managed.maxMemory": (_without("broker.managed.maxMemory"), {"Deployment/shop-broker"}),
    "flower.allowFrom": (_without("flower.allowFrom"), {"NetworkPolicy/shop-flower"}),
}


def test_a_settled_child_needs_no_write() -> None:
    for key, manifest in _children(EVERYTHING).items():
        assert not drift.needs_apply(manifest, _as_served(manifest)), key


@pytest.mark.parametrize("removal", REMOVALS, ids=list(REMOVALS))
def test_a_removal_reaches_exactly_the_children_built_from_it(removal: str) -> None:
    remove, expected = REMOVALS[removal]
    before = _children(EVERYTHING)
    edited = copy.deepcopy(EVERYTHING)
    remove(edited)
    after = _children(edited)
    assert set(after) == set(before), "a removed field deletes no child"

    live = {key: _as_served(manifest) for key, manifest in before.items()}
    written = {key for key, manifest in after.items() if drift.needs_apply(manifest, live[key])}
    assert written == expected
    for key in written:  # what is applied holds the removal: the server drops what it no longer names
        assert after[key] != before[key]
        assert not drift.holds(before[key], after[key]), f"{key} still carries the removed {removal}"


def test_turning_flower_off_removes_its_children_and_touches_nothing_else() -> None:
    before = _children(EVERYTHING)
    after = _children({**EVERYTHING, "flower": {"enabled": False}})
    assert set(before) - set(after) == {"Deployment/shop-flower", "Service/shop-flower", "Secret/shop-flower",
                                        "NetworkPolicy/shop-flower"}
    live = {key: _as_served(manifest) for key, manifest in before.items()}
    assert {key for key, manifest in after.items() if drift.needs_apply(manifest, live[key])} == set()


def test_the_hash_covers_the_whole_manifest_but_not_itself() -> None:
    [worker] = [m for key, m in _children(EVERYTHING).items() if key == "Deployment/shop-worker-a"]
    assert drift.applied_hash(worker) == drift.manifest_hash(worker), "stamping twice gives the same stamp"
    assert drift.stamped(worker) == worker
    trimmed = copy.deepcopy(worker)
    trimmed["spec"]["template"]["metadata"]["labels"].pop("team")
    assert drift.manifest_hash(trimmed) != drift.manifest_hash(worker)


def test_a_child_applied_before_the_hash_existed_is_applied_once() -> None:
    [worker] = [m for key, m in _children(EVERYTHING).items() if key == "Deployment/shop-worker-a"]
    old = _as_served(worker)
    del old["metadata"]["annotations"][naming.ANNOTATION_APPLIED_HASH]
    assert drift.needs_apply(worker, old)


# --- drift in a field the reconciler sets -------------------------------------------------------

def _deployment(**container: object) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w", "labels": {"a": "1"}},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "worker", "image": "app:1",
                                                                          **container}]}}}}


def test_fields_the_server_or_others_add_are_held() -> None:
    desired = _deployment(env=[{"name": "A", "value": "1"}], resources={"requests": {"cpu": "0.5", "memory": "1Gi"}})
    live = _deployment(env=[{"name": "A", "value": "1"}, {"name": "ADDED_BY_SOMEONE", "value": "x"}],
                       resources={"requests": {"cpu": "500m", "memory": "1024Mi"}}, imagePullPolicy="IfNotPresent")
    live["metadata"].update(uid="u", resourceVersion="7", labels={"a": "1", "other": "y"})
    live["status"] = {"replicas": 2}
    assert drift.holds(desired, live)
    assert not drift.needs_apply(drift.stamped(desired), {**live, "metadata": {
        **live["metadata"], "annotations": {naming.ANNOTATION_APPLIED_HASH: drift.manifest_hash(desired)}}})


@pytest.mark.parametrize("edit", [
    lambda live: live["spec"].update(replicas=3),
    lambda live: live["spec"]["template"]["spec"]["containers"][0].update(image="evil:1"),
    lambda live: live["metadata"]["labels"].pop("a"),
    lambda live: live["spec"]["template"]["spec"]["containers"][0]["env"].pop(0),
    lambda live: live["spec"]["template"]["spec"]["containers"][0]["env"].reverse(),
    lambda live: live["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"].update(cpu="1"),
    lambda live: live["spec"]["template"]["spec"]["containers"][0].update(command=["celery", "other"]),
])
def test_an_edit_of_a_field_the_reconciler_sets_is_seen(edit) -> None:
    desired = drift.stamped(_deployment(env=[{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                                        resources={"requests": {"cpu": "0.5"}}, command=["celery", "worker"]))
    live = copy.deepcopy(desired)
    live["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "500m"
    assert not drift.needs_apply(desired, live)
    edit(live)
    assert drift.needs_apply(desired, live)


def test_secret_data_compares_exactly() -> None:
    desired = {"data": {"url": "cmVkaXM6Ly9h"}}
    assert drift.holds(desired, {"data": {"url": "cmVkaXM6Ly9h"}, "type": "Opaque"})
    assert not drift.holds(desired, {"data": {"url": "cmVkaXM6Ly9i"}})
    assert not drift.holds(desired, {})
