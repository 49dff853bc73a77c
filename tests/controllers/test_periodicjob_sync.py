"""The PeriodicJob controller (periodicjobs.reconcile_periodicjob) against fakes of its ports: it
writes the job's entry into its TaskQueue's beat state at once, reports Ready and the schedule
times from that state, writes nothing when nothing changed, and takes the job out of a beat when
it leaves (deleted, moved, made invalid)."""

from __future__ import annotations

import datetime
import json
import threading
from typing import Any

import pytest

from celery_operator import periodicjobs, reconcile
from celery_operator.beat.jobs import format_fired
from celery_operator.beat.state import StateLocation
from tests.controllers.fakes import FakeBeatState, FakeKube, FakeState, fake_runtime

pytestmark = pytest.mark.controllers

URL = "redis://redis.shared:6379/0"
NOW = datetime.datetime(2026, 11, 24, 8, 0, tzinfo=datetime.timezone.utc).timestamp()
TQ_SPEC: dict[str, Any] = {"image": "acme/shop:1", "app": "myproject", "broker": {"url": URL},
                           "queues": [{"name": "jobs", "replicas": 1}]}
JOB_SPEC: dict[str, Any] = {"taskQueueRef": {"name": "shop"}, "task": "myapp.tasks.cleanup", "interval": "1h",
                            "queue": "jobs"}


class Jobs:
    """A reconciled TaskQueue on a Redis broker, and its PeriodicJobs."""

    def __init__(self) -> None:
        self.runtime = fake_runtime()
        self.kube: FakeKube = self.runtime.kube  # type: ignore[assignment]
        self.state_store: FakeBeatState = self.runtime.beat_state  # type: ignore[assignment]
        body = self.kube.create_taskqueue("shop", TQ_SPEC)
        self.tq_uid = body["metadata"]["uid"]
        reconcile.reconcile_taskqueue(self.runtime, body, [])

    @property
    def state(self) -> FakeState:
        return self.state_store.of(StateLocation(URL, "celery-operator:beat:{ns/shop}:"))

    def create(self, name: str = "hourly", **spec: Any) -> None:
        self.kube.create_custom({"apiVersion": "celery-operator.dev/v1alpha1", "kind": "PeriodicJob",
                                 "metadata": {"name": name, "namespace": "ns"}, "spec": {**JOB_SPEC, **spec}})

    def edit(self, name: str = "hourly", **spec: Any) -> None:
        self.kube.edit_spec("PeriodicJob", name, {**JOB_SPEC, **spec})

    def sync(self, name: str = "hourly", now: float = NOW, taskqueue: bool = True,
             moved_from: Any = None) -> list[tuple[str, str, str]]:
        mark = len(self.kube.writes)
        body = self.kube.body("PeriodicJob", name)
        tq = self.kube.body("TaskQueue", "shop") if taskqueue else None
        children = self.kube.children_of(self.tq_uid) if taskqueue else []
        periodicjobs.reconcile_periodicjob(self.runtime, body, tq, children, now=now, moved_from=moved_from)
        return self.kube.writes_since(mark)

    def status(self, name: str = "hourly") -> dict[str, Any]:
        return self.kube.body("PeriodicJob", name)["status"]

    def ready(self, name: str = "hourly") -> tuple[str, str]:
        [condition] = self.status(name)["conditions"]
        return condition["status"], condition["reason"]


def test_a_new_job_is_in_the_beat_state_at_once_and_ready_once_a_beat_leads() -> None:
    jobs = Jobs()
    jobs.create()
    jobs.sync()
    entry = json.loads(jobs.state.jobs["hourly"])
    assert (entry["task"], entry["interval"], entry["queue"], entry["activeSince"]) == (
        "myapp.tasks.cleanup", "1h", "jobs", NOW)
    assert jobs.ready() == ("False", "BeatNotRunning"), "no beat has reported yet"
    jobs.state.heartbeat = {"instance": "shop-beat-abc"}
    jobs.sync(now=NOW + 1)
    assert jobs.ready() == ("True", "Scheduled")
    assert jobs.status()["nextScheduleTime"] == "2026-11-24T09:00:00Z"
    jobs.state.fired["hourly"] = format_fired(NOW + 3600)
    jobs.sync(now=NOW + 3601)
    status = jobs.status()
    assert (status["lastScheduleTime"], status["nextScheduleTime"]) == ("2026-11-24T09:00:00Z",
                                                                        "2026-11-24T10:00:00Z")
    assert [e[1:3] for e in jobs.kube.events if e[0] == "hourly"] == [("Warning", "BeatNotRunning"),
                                                                       ("Normal", "Scheduled")]


def test_a_settled_job_costs_no_write() -> None:
    jobs = Jobs()
    jobs.create()
    jobs.state.heartbeat = {"instance": "shop-beat-abc"}
    jobs.sync()
    writes_to_state = jobs.state_store.writes
    for _ in range(3):
        assert jobs.sync(now=NOW + 5) == []
    assert jobs.state_store.writes == writes_to_state


def test_suspending_keeps_the_entry_and_drops_the_next_time() -> None:
    jobs = Jobs()
    jobs.create()
    jobs.state.heartbeat = {"instance": "shop-beat-abc"}
    jobs.sync()
    jobs.edit(suspend=True)
    jobs.sync(now=NOW + 10)
    assert json.loads(jobs.state.jobs["hourly"])["suspend"] is True
    assert jobs.ready() == ("True", "Suspended")
    assert "nextScheduleTime" not in jobs.status()


def test_an_edit_that_makes_the_schedule_invalid_takes_the_job_out_of_the_beat() -> None:
    jobs = Jobs()
    jobs.create()
    jobs.sync()
    assert "hourly" in jobs.state.jobs
    jobs.kube.edit_spec("PeriodicJob", "hourly", {**{k: v for k, v in JOB_SPEC.items() if k != "interval"},
                                                  "schedule": "every day"})
    jobs.sync()
    assert "hourly" not in jobs.state.jobs
    [condition] = jobs.status()["conditions"]
    assert condition["reason"] == "InvalidSchedule" and "spec.schedule" in condition["message"]


def test_a_job_whose_taskqueue_does_not_exist_says_so() -> None:
    jobs = Jobs()
    jobs.create("orphan", taskQueueRef={"name": "nowhere"})
    jobs.sync("orphan", taskqueue=False)
    assert jobs.ready("orphan") == ("False", "TaskQueueNotFound")
    assert jobs.sync("orphan", taskqueue=False) == [], "told once"


def test_a_job_moved_away_leaves_the_old_taskqueues_beat() -> None:
    jobs = Jobs()
    jobs.create()
    jobs.sync()
    old = (jobs.kube.body("TaskQueue", "shop"), jobs.kube.children_of(jobs.tq_uid))
    jobs.edit(taskQueueRef={"name": "other"})
    jobs.sync(taskqueue=False, moved_from=old)
    assert "hourly" not in jobs.state.jobs
    assert jobs.ready() == ("False", "TaskQueueNotFound")


def test_an_unreachable_state_store_is_told_and_the_times_known_are_kept() -> None:
    jobs = Jobs()
    jobs.create()
    jobs.state.heartbeat = {"instance": "shop-beat-abc"}
    jobs.sync()
    before = jobs.status()["nextScheduleTime"]
    jobs.state_store.unavailable = "ConnectionError: refused"
    jobs.sync(now=NOW + 5)
    assert jobs.ready() == ("False", "BeatNotRunning")
    assert jobs.status()["nextScheduleTime"] == before


def test_a_deleted_job_leaves_the_beat_at_once() -> None:
    jobs = Jobs()
    jobs.create()
    jobs.sync()
    periodicjobs.forget_periodicjob(jobs.runtime, jobs.kube.body("PeriodicJob", "hourly"),
                                    jobs.kube.body("TaskQueue", "shop"), jobs.kube.children_of(jobs.tq_uid))
    assert jobs.state.jobs == {}


def test_a_taskqueue_pass_that_read_its_periodicjobs_before_a_deletion_does_not_put_the_job_back() -> None:
    """The TaskQueue's sync reads the PeriodicJobs referring to it from the operator's cache; a pass
    that read them before a job's deletion reached the cache may write after the job's delete handler
    took it out. It must not put the job back: the beat would go on sending a deleted job."""
    jobs = Jobs()
    jobs.create()
    jobs.create("daily")
    jobs.sync()
    jobs.sync("daily")
    taskqueue, children = jobs.kube.body("TaskQueue", "shop"), jobs.kube.children_of(jobs.tq_uid)
    hourly, daily = jobs.kube.body("PeriodicJob", "hourly"), jobs.kube.body("PeriodicJob", "daily")

    periodicjobs.forget_periodicjob(jobs.runtime, hourly, taskqueue, children)
    assert list(jobs.state.jobs) == ["daily"]
    reconcile.reconcile_taskqueue(jobs.runtime, taskqueue, children, [hourly, daily])  # read before the delete
    assert list(jobs.state.jobs) == ["daily"], "the deleted job stays out of the beat"


def test_passes_that_waited_through_a_deletion_write_nothing_after_it() -> None:
    """A timer's pass holding a body read before its object was deleted runs after the delete
    handler: neither the TaskQueue's sync nor a PeriodicJob's may put the schedule state back, or a
    beat still running until garbage collection would go on sending."""
    jobs = Jobs()
    jobs.create()
    jobs.sync()
    taskqueue, children = jobs.kube.body("TaskQueue", "shop"), jobs.kube.children_of(jobs.tq_uid)
    job = jobs.kube.body("PeriodicJob", "hourly")
    periodicjobs.forget_taskqueue(jobs.runtime, taskqueue, children)
    assert jobs.state_store.states == {}
    mark, writes = len(jobs.kube.writes), jobs.state_store.writes

    reconcile.reconcile_taskqueue(jobs.runtime, taskqueue, children, [job])
    assert jobs.kube.writes_since(mark) == [] and jobs.state_store.writes == writes
    jobs.sync(now=NOW + 1)  # the index still names the TaskQueue
    assert jobs.state_store.states == {}
    assert jobs.ready() == ("False", "TaskQueueNotFound")

    periodicjobs.forget_periodicjob(jobs.runtime, job, None, [])
    mark = len(jobs.kube.writes)
    periodicjobs.reconcile_periodicjob(jobs.runtime, job, None, [], now=NOW + 2)
    assert jobs.kube.writes_since(mark) == [], "nothing written for a deleted PeriodicJob"


def test_forgetting_an_object_waits_for_its_pass_under_way() -> None:
    runtime = fake_runtime()
    forgotten = threading.Event()
    with runtime.exclusively("uid-1") as present:
        assert present
        forgetting = threading.Thread(target=lambda: (runtime.forget("uid-1"), forgotten.set()))
        forgetting.start()
        assert not forgotten.wait(0.3), "forget returned while a pass held the object"
    assert forgotten.wait(10)
    forgetting.join()
    with runtime.exclusively("uid-1") as present:
        assert not present
    with runtime.exclusively("uid-2") as present:
        assert present, "other objects are untouched"
