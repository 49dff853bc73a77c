"""A worker pod removed while it starts goes at once, and never runs a task.

The ReplicaSet removes unready pods first, so a scale-down soon after a scale-up takes the workers
that are still starting. The kubelet's SIGTERM goes to the container's main process; were Celery
PID 1 in its container, the kernel would drop that SIGTERM as long as Celery has no handler yet (a
namespace's init ignores signals it does not handle), the worker would start, consume, and be killed
at the end of its grace period, mid-task. The sample app's import delay (SAMPLE_APP_IMPORT_DELAY_SECONDS)
holds the worker in its start for long enough to remove it there, for real.
"""

from __future__ import annotations

import time

import celery
import pytest

from tests.helpers.processes import RedisServer
from tests.helpers.taskqueues import TaskQueues, taskqueue
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.e2e

GRACE_SECONDS, IMPORT_DELAY = 120, 20


def test_a_worker_deleted_while_it_starts_stops_at_once_without_taking_a_task(
        tqs: TaskQueues, redis_server: RedisServer) -> None:
    tqs.apply(taskqueue("slowstart", broker={"url": redis_server.url},
                        env=[{"name": "SAMPLE_APP_IMPORT_DELAY_SECONDS", "value": str(IMPORT_DELAY)}],
                        queues=[{"name": "jobs", "replicas": 1, "terminationGracePeriodSeconds": GRACE_SECONDS}]))
    selector = "app.kubernetes.io/instance=slowstart,app.kubernetes.io/component=worker"

    def running() -> object:
        pods = [p for p in tqs.core.list_namespaced_pod(tqs.namespace, label_selector=selector).items
                if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
        return pods[0] if pods else None

    pod = wait_for(running, 120, "the worker's container running (still importing the app)")
    producer = celery.Celery(broker=redis_server.url)
    producer.send_task("myapp.tasks.record", args=["slowstart-runs", 0, 0], queue="jobs")
    deleted = time.monotonic()
    tqs.core.delete_namespaced_pod(pod.metadata.name, tqs.namespace)

    def gone() -> bool:
        names = [p.metadata.name for p in tqs.core.list_namespaced_pod(tqs.namespace, label_selector=selector).items]
        return pod.metadata.name not in names

    wait_for(gone, IMPORT_DELAY, f"the deleted pod to go (well before its {GRACE_SECONDS} s grace period)", interval=0.2)
    print(f"\na worker deleted while it started was gone {time.monotonic() - deleted:.1f} s later")
    with redis_server.client() as client:
        assert client.llen("slowstart-runs") == 0 or all(
            pod.metadata.name not in entry.decode() for entry in client.lrange("slowstart-runs", 0, -1)), \
            "the deleted worker ran a task"
