"""PeriodicJob objects for end-to-end tests: build, apply, edit, delete, and wait on their status;
and reading back which runs the sample app's `record` task saw."""

from __future__ import annotations

import json
from typing import Any

import kubernetes
import redis

from celery_operator import naming
from celery_operator.beat.jobs import split_task_id
from celery_operator.beat.schedule import parse_slot
from tests.helpers.taskqueues import CustomResources
from tests.helpers.waiting import wait_for

GROUP, VERSION, PLURAL = "celery-operator.dev", "v1alpha1", "periodicjobs"


def periodicjob(name: str, taskqueue: str, key: str, *, queue: str | None = "jobs", **spec: Any) -> dict[str, Any]:
    """A PeriodicJob sending `myapp.tasks.record(key)`: every run appends its task id to the list `key`."""
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "PeriodicJob", "metadata": {"name": name},
            "spec": {"taskQueueRef": {"name": taskqueue}, "task": "myapp.tasks.record", "args": [key], **spec}}
    if queue is not None:
        body["spec"]["queue"] = queue
    return body


class PeriodicJobs(CustomResources):
    plural = PLURAL

    def exists(self, name: str) -> bool:
        try:
            self.get(name)
            return True
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return False
            raise

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec})

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def condition(self, name: str, condition_type: str = "Ready") -> dict[str, Any] | None:
        for condition in self.status(name).get("conditions", []):
            if condition["type"] == condition_type:
                return condition
        return None

    def wait_ready(self, name: str, status: str, reason: str | None = None, timeout: float = 60) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            body = self.get(name)
            for found in (body.get("status") or {}).get("conditions", []):
                if (found["type"] == "Ready" and found["status"] == status
                        and (reason is None or found["reason"] == reason)
                        and found.get("observedGeneration") == body["metadata"]["generation"]):
                    return found
            return None

        return wait_for(matches, timeout, f"Ready={status} ({reason}) on PeriodicJob {name}")

    def events(self, name: str) -> list[Any]:
        selector = f"involvedObject.name={name},involvedObject.kind=PeriodicJob"
        return self.core.list_namespaced_event(self.namespace, field_selector=selector).items


def recorded(url: str, key: str) -> list[dict[str, Any]]:
    """What the `record` task appended to the list `key`: {"id", "value", "hostname"} per run."""
    client = redis.Redis.from_url(url)
    try:
        return [json.loads(item) for item in client.lrange(key, 0, -1)]
    finally:
        client.close()


def run_slots(url: str, key: str, job: str | None = None) -> list[float]:
    """The slots of the runs recorded in `key` (their task ids are `<namespace>/<job>@<slot>`), in
    the order the workers ran them; every run must be of `job` when given."""
    slots = []
    for entry in recorded(url, key):
        parsed = split_task_id(entry["id"])
        assert parsed is not None, entry
        if job is not None:
            assert parsed[1] == job, entry
        slots.append(parse_slot(parsed[2]))
    return slots


def assert_unique(slots: list[float]) -> None:
    doubled = sorted({s for s in slots if slots.count(s) > 1})
    assert not doubled, f"runs sent twice: {doubled}"


def assert_consecutive(slots: list[float], step: float) -> None:
    ordered = sorted(slots)
    holes = [(a, b) for a, b in zip(ordered, ordered[1:]) if abs(b - a - step) > 1e-6]
    assert not holes, f"runs missing between {holes}"


def state_keys(namespace: str, taskqueue_name: str) -> tuple[str, str]:
    """The beat state's hashes of a TaskQueue: its jobs, and the last run fired per job."""
    prefix = naming.beat_key_prefix(namespace, taskqueue_name)
    return prefix + "jobs", prefix + "fired"


def fired(url: str, namespace: str, taskqueue_name: str, job: str) -> float | None:
    """The slot of the job's last run the beat sent, from the beat's state."""
    with redis.Redis.from_url(url) as client:
        value = client.hget(state_keys(namespace, taskqueue_name)[1], job)
    return None if value is None else float(value)


def beat_pods(core: kubernetes.client.CoreV1Api, namespace: str, taskqueue_name: str) -> list[Any]:
    """The TaskQueue's beat pods that are not being deleted."""
    selector = f"app.kubernetes.io/instance={taskqueue_name},app.kubernetes.io/component=beat"
    return [p for p in core.list_namespaced_pod(namespace, label_selector=selector).items
            if not p.metadata.deletion_timestamp]
