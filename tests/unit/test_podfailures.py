"""From pod statuses to why a Deployment's pods cannot run (podfailures.py)."""

from __future__ import annotations

from typing import Any

import pytest

from celery_operator.podfailures import deployment_failure, pod_failure, unbound_claim

pytestmark = pytest.mark.unit

SELECTOR = {"app.kubernetes.io/instance": "shop", "app.kubernetes.io/component": "worker",
            "celery-operator.dev/queue": "jobs"}
DEPLOYMENT = {"metadata": {"name": "shop-worker-jobs"}, "spec": {"selector": {"matchLabels": SELECTOR}}}


def pod(*statuses: dict[str, Any], labels: dict[str, str] | None = None, init: tuple[dict[str, Any], ...] = (),
        leaving: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "shop-worker-jobs-7f9-x", "labels": {**SELECTOR, **(labels or {})}}
    if leaving:
        metadata["deletionTimestamp"] = "2026-11-24T08:00:00Z"
    return {"metadata": metadata, "status": {"containerStatuses": list(statuses),
                                             "initContainerStatuses": list(init)}}


def waiting(reason: str, message: str = "", name: str = "worker", **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "acme/shop:missing", "ready": False,
            "state": {"waiting": {"reason": reason, "message": message}}, **extra}


RUNNING = {"name": "worker", "image": "acme/shop:1", "ready": True, "state": {"running": {}}}


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"])
def test_an_image_that_cannot_be_pulled_names_the_image(reason: str) -> None:
    failure = pod_failure("shop-worker-jobs", pod(waiting(reason, "rpc error: not found")))
    assert (failure.reason, failure.detail) == (reason, "image acme/shop:missing")
    assert failure.describe() == (f"Deployment shop-worker-jobs: container worker cannot run ({reason}: "
                                  "image acme/shop:missing)")


def test_a_missing_secret_key_is_a_config_error_with_the_kubelets_message() -> None:
    failure = pod_failure("d", pod(waiting("CreateContainerConfigError", 'secret "shop-broker" not found')))
    assert (failure.reason, failure.detail) == ("CreateContainerConfigError", 'secret "shop-broker" not found')


@pytest.mark.parametrize("message", [
    "failed to sync secret cache: timed out waiting for the condition",
    "failed to sync configmap cache: timed out waiting for the condition",
    'object "shop"/"shop-broker" not registered',
])
def test_a_kubelet_whose_secret_watch_has_not_synced_yet_is_starting_not_failing(message: str) -> None:
    # Seen on a real node: the kubelet gives its Secret watch one second, then retries on its next sync.
    assert pod_failure("d", pod(waiting("CreateContainerConfigError", message))) is None


def test_a_crash_loop_after_an_oom_kill_says_oom() -> None:
    oom = waiting("CrashLoopBackOff", "back-off 40s", lastState={"terminated": {"reason": "OOMKilled"}})
    assert pod_failure("d", pod(oom)).reason == "OOMKilled"
    crash = waiting("CrashLoopBackOff", "back-off 40s", lastState={"terminated": {"reason": "Error", "exitCode": 1}})
    assert pod_failure("d", pod(crash)).reason == "CrashLoopBackOff"


def test_an_oom_killed_container_that_restarted_and_is_not_ready_yet_says_oom() -> None:
    restarted = {**RUNNING, "ready": False, "lastState": {"terminated": {"reason": "OOMKilled"}}}
    assert pod_failure("d", pod(restarted)).reason == "OOMKilled"
    assert pod_failure("d", pod({**restarted, "ready": True})) is None, "it runs again: nothing to report"


@pytest.mark.parametrize("status", [
    RUNNING,
    waiting("ContainerCreating"),
    waiting("PodInitializing"),
    {"name": "worker", "ready": False, "state": {"terminated": {"reason": "Completed", "exitCode": 0}}},
])
def test_starting_running_or_finished_containers_are_no_failure(status: dict[str, Any]) -> None:
    assert pod_failure("d", pod(status)) is None


def test_a_pod_without_statuses_is_no_failure() -> None:
    assert pod_failure("d", {"metadata": {"name": "p"}, "status": {"phase": "Pending"}}) is None


def test_init_containers_count_too() -> None:
    failure = pod_failure("d", pod(waiting("PodInitializing"), init=(waiting("ImagePullBackOff", name="setup"),)))
    assert (failure.container, failure.reason) == ("setup", "ImagePullBackOff")


def test_a_pod_being_deleted_no_longer_counts() -> None:
    assert pod_failure("d", pod(waiting("ImagePullBackOff"), leaving=True)) is None


def test_a_deployment_reports_its_own_pods_only_and_the_most_telling_reason() -> None:
    other_queue = pod(waiting("ImagePullBackOff"), labels={"celery-operator.dev/queue": "other"})
    assert deployment_failure(DEPLOYMENT, [other_queue]) is None
    pods = [pod(waiting("CrashLoopBackOff")), pod(waiting("ImagePullBackOff")), pod(RUNNING)]
    failure = deployment_failure(DEPLOYMENT, pods)
    assert (failure.deployment, failure.reason) == ("shop-worker-jobs", "ImagePullBackOff"), \
        "a pull failure explains a crash loop, not the other way round"
    assert deployment_failure(DEPLOYMENT, [pod(RUNNING)]) is None


def test_a_deployment_without_a_selector_matches_no_pod() -> None:
    assert deployment_failure({"metadata": {"name": "d"}, "spec": {}}, [pod(waiting("ImagePullBackOff"))]) is None


def claim_event(event_type: str, reason: str, message: str, uid: str = "c1",
                at: str = "2026-12-07T10:00:00Z") -> dict[str, Any]:
    return {"type": event_type, "reason": reason, "message": message, "lastTimestamp": at,
            "involvedObject": {"kind": "PersistentVolumeClaim", "name": "shop-broker", "uid": uid}}


CLAIM = {"metadata": {"name": "shop-broker", "uid": "c1"}, "status": {"phase": "Pending"}}


def test_a_pending_claim_is_failing_only_once_the_binder_or_provisioner_warns() -> None:
    waiting = claim_event("Normal", "WaitForFirstConsumer", "waiting for first consumer to be created before binding")
    assert unbound_claim(CLAIM, [waiting]) is None
    no_class = claim_event("Warning", "ProvisioningFailed", 'storageclass.storage.k8s.io "fast" not found',
                           at="2026-12-07T10:00:05Z")
    older = claim_event("Warning", "FailedBinding", "no persistent volumes available", at="2026-12-07T10:00:01Z")
    assert unbound_claim(CLAIM, [waiting, no_class, older]) == (
        'PersistentVolumeClaim shop-broker cannot bind (ProvisioningFailed: storageclass.storage.k8s.io "fast" '
        'not found)'), "the newest warning"


def test_a_claim_without_any_storage_class_is_failing_though_the_binder_says_so_as_normal() -> None:
    no_class = claim_event("Normal", "FailedBinding",
                           "no persistent volumes available for this claim and no storage class is set")
    assert unbound_claim(CLAIM, [no_class]) == (
        "PersistentVolumeClaim shop-broker cannot bind (FailedBinding: no persistent volumes available for this "
        "claim and no storage class is set)")


def test_a_bound_claim_or_an_earlier_claims_warning_is_no_failure() -> None:
    warning = claim_event("Warning", "ProvisioningFailed", "boom")
    assert unbound_claim({**CLAIM, "status": {"phase": "Bound"}}, [warning]) is None
    assert unbound_claim(CLAIM, [claim_event("Warning", "ProvisioningFailed", "boom", uid="old")]) is None
