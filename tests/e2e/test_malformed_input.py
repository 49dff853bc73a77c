"""Malformed TaskQueues and PeriodicJobs sent to a running system: every one refused at admission
with a message naming the field, and the running system untouched — no write to our objects or
their children, and the workers still run tasks afterwards."""

from __future__ import annotations

import base64
import copy
import json
import time
from typing import Any

import celery
import pytest
import redis

from tests.cluster.test_crd_admission import BAD_PERIODICJOBS, BAD_TASKQUEUES
from tests.helpers.periodicjobs import PeriodicJobs, periodicjob
from tests.helpers.taskqueues import TaskQueues, taskqueue
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.e2e

NAME = "shop"   # the name the tables' edits keep, so that each one is an update of the running object
SETTLED_FOR = 3.0


def _settled(tqs: TaskQueues, pjs: PeriodicJobs) -> dict[str, str]:
    """The resource versions of everything the operator writes, once two looks SETTLED_FOR apart agree."""
    def snapshot() -> dict[str, str]:
        return {**tqs.resource_versions(NAME), "PeriodicJob/nightly": pjs.get("nightly")["metadata"]["resourceVersion"]}

    def unchanged() -> dict[str, str] | None:
        before = snapshot()
        time.sleep(SETTLED_FOR)
        return before if snapshot() == before else None

    return wait_for(unchanged, 120, "the TaskQueue and its children to settle")


def _refused(tqs: TaskQueues, body: dict[str, Any]) -> str:
    result = tqs.cluster.kubectl("apply", "-n", tqs.namespace, "-f", "-", input=json.dumps(body), check=False)
    assert result.returncode != 0, f"accepted: {json.dumps(body)[:300]}"
    return result.stderr


def test_malformed_updates_are_refused_and_change_nothing(tqs: TaskQueues) -> None:
    running_taskqueue = taskqueue(NAME, queues=[{"name": "jobs", "replicas": 1}])
    running_job = periodicjob("nightly", NAME, "never-due", schedule="0 3 * * *")
    pjs = PeriodicJobs(tqs.cluster, tqs.namespace)
    try:
        tqs.apply(running_taskqueue)
        pjs.apply(running_job)
        tqs.wait_condition(NAME, "Ready", "True", timeout=180)
        before = _settled(tqs, pjs)

        refusals = 0
        for table, running in ((BAD_TASKQUEUES, running_taskqueue), (BAD_PERIODICJOBS, running_job)):
            for case, (change, field_text) in table.items():
                body = copy.deepcopy(running)
                change(body)
                message = _refused(tqs, body)
                assert field_text in message, f"{case}: the refusal does not name {field_text}: {message}"
                refusals += 1
        assert refusals >= 25

        assert _settled(tqs, pjs) == before, "a refused update changed the running system"
        assert tqs.get(NAME)["spec"]["queues"] == running_taskqueue["spec"]["queues"]
        url = base64.b64decode(tqs.core.read_namespaced_secret(f"{NAME}-broker", tqs.namespace).data["url"]).decode()
        celery.Celery(broker=url).send_task("myapp.tasks.record", args=["after-refusals", "ok"], queue="jobs")
        client = redis.Redis.from_url(url)
        [entry] = wait_for(lambda: client.lrange("after-refusals", 0, -1), 60, "the worker to run a task")
        assert json.loads(entry)["value"] == "ok"
    finally:
        pjs.close()
