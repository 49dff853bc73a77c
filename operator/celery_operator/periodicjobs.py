"""PeriodicJobs: each job's entry in its TaskQueue's beat state, and its status. No kopf imports.

The TaskQueue's reconcile keeps the whole `jobs` hash equal to the valid PeriodicJobs referring to
it (see reconcile.py); this controller writes one job's entry the moment the PeriodicJob is
created, edited, suspended or resumed (and on its timer), so the running beat sees the change
within a second instead of a resync later, and removes it at once when the PeriodicJob is deleted.
Both writers compute the entry with the same pure function and write compare-and-set, so they
never undo each other.

Status (applied under the operator's field manager, only when it changed):
- Ready: True once the TaskQueue's beat carries this generation of the job (its entry is in the
  state and a beat leads, i.e. its heartbeat has not expired); False with reason
  TaskQueueNotFound, CustomScheduler, InvalidSchedule (naming the field), InvalidSpec or
  BeatNotRunning.
- lastScheduleTime: the last run sent (the slot, from `fired`); nextScheduleTime: the next one due
  (absent while suspended); observedGeneration.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from . import naming
from .beat import state as beat_state
from .beat.jobs import decode_entry, encode_entry, job_entry, parse_fired, parse_periodicjob
from .beat.schedule import Schedule, next_slot
from .beat.state import StateLocation
from .broker.urls import BrokerUnavailable
from .children import Children, Manifest
from .conditions import Condition, format_time
from .kube import unless_namespace_terminating
from .models import ObjectIdentity, PeriodicJobSpec, SpecError, TaskQueueSpec
from .reasons import PeriodicJobReady as Ready
from .runtime import Runtime
from .status import HeadlineEvents, StatusPart, publish

logger = logging.getLogger(__name__)

SCHEDULE_FIELDS: Final = ("spec", "spec.schedule", "spec.interval", "spec.timeZone")
CELERY_DEFAULT_QUEUE: Final = "celery"
TIME_FIELDS: Final = ("lastScheduleTime", "nextScheduleTime")
STATUS: Final = StatusPart(conditions=frozenset({Ready.TYPE}), fields=frozenset({"observedGeneration", *TIME_FIELDS}))
EVENTS: Final = HeadlineEvents(Ready.TYPE)


def state_location(taskqueue: ObjectIdentity, children: Children) -> StateLocation | None:
    """Where the TaskQueue's beat keeps its schedule, from the URLs in its Secrets."""
    return beat_state.locate(taskqueue.namespace, taskqueue.name, children.broker_url(taskqueue.name),
                             children.beat_state_url(taskqueue.name))


# --- one PeriodicJob ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What one pass found: the Ready condition and, when the state was read, the schedule times."""

    ready: Condition
    known: bool = False  # False: last/next could not be read; the previous values are restated
    last: str | None = None
    next: str | None = None


def _time(slot: float | None) -> str | None:
    if slot is None:
        return None
    return format_time(datetime.datetime.fromtimestamp(slot, datetime.timezone.utc))


def _queue_note(spec: PeriodicJobSpec, taskqueue: str, tq_spec: TaskQueueSpec) -> str:
    queues = {q.name for q in tq_spec.queues}
    if spec.queue is None and CELERY_DEFAULT_QUEUE not in queues:
        return (f"; note: without spec.queue the task goes to Celery's default queue {CELERY_DEFAULT_QUEUE!r} "
                f"(the beat does not load the app's task_routes), which no worker of TaskQueue {taskqueue} consumes")
    if spec.queue is not None and spec.queue not in queues:
        return f"; note: no worker of TaskQueue {taskqueue} consumes queue {spec.queue!r}"
    return ""


def _not_running(message: str) -> Outcome:
    return Outcome(Condition.false(Ready.TYPE, Ready.BEAT_NOT_RUNNING, message))


def _taskqueue_not_found(spec: PeriodicJobSpec, namespace: str) -> Outcome:
    return Outcome(Condition.false(Ready.TYPE, Ready.TASKQUEUE_NOT_FOUND,
                                   f"spec.taskQueueRef.name: TaskQueue {spec.task_queue_name!r} does not exist "
                                   f"in namespace {namespace}"), known=True)


def _write_entry(runtime: Runtime, identity: ObjectIdentity, tq: ObjectIdentity, spec: PeriodicJobSpec,
                 location: StateLocation, now: float) -> tuple[dict[str, Any], float | None, bool]:
    """Write the job's entry when it differs: (the entry in the state now, its last fired slot,
    whether a beat leads). Raises BrokerUnavailable."""
    state = runtime.beat_state.read(location, identity.name)
    current = state.jobs.get(identity.name)
    entry = job_entry(spec, uid=identity.uid, generation=identity.generation, task_queue_uid=tq.uid,
                      previous=decode_entry(current), now=now)
    text = encode_entry(entry)
    if text != current:
        if runtime.beat_state.write_jobs(location, {identity.name: (current, text)}, {}):
            # the TaskQueue's sync wrote it meanwhile: read what is there now
            state = runtime.beat_state.read(location, identity.name)
            entry = decode_entry(state.jobs.get(identity.name)) or entry
        else:
            logger.info("PeriodicJob %s/%s: schedule entry written (generation %d)", identity.namespace,
                        identity.name, identity.generation)
    return entry, parse_fired(state.fired.get(identity.name)), state.heartbeat is not None


def _sync_with_taskqueue(runtime: Runtime, body: Mapping[str, Any], spec: PeriodicJobSpec, schedule: Schedule,
                         taskqueue: Mapping[str, Any], children: Children, now: float) -> Outcome:
    identity = ObjectIdentity.from_body(body)
    tq = ObjectIdentity.from_body(taskqueue)
    try:
        tq_spec = TaskQueueSpec.parse(taskqueue.get("spec"))
    except SpecError as error:
        return _not_running(f"TaskQueue {tq.name} cannot run a beat: {error}")
    if tq_spec.beat.custom_scheduler:
        return Outcome(Condition.false(Ready.TYPE, Ready.CUSTOM_SCHEDULER,
                                       f"TaskQueue {tq.name} runs its own beat scheduler (spec.beat.scheduler: "
                                       f"{tq_spec.beat.scheduler}); PeriodicJobs are not sent by it"))
    location = state_location(tq, children)
    if location is None:
        return _not_running(f"waiting for TaskQueue {tq.name}'s beat state store")
    with runtime.exclusively(tq.uid) as taskqueue_present:  # its deletion removes the state written here
        if not taskqueue_present:
            return _taskqueue_not_found(spec, identity.namespace)
        try:
            entry, fired, beat_leads = _write_entry(runtime, identity, tq, spec, location, now)
        except BrokerUnavailable as error:
            return _not_running(f"cannot reach TaskQueue {tq.name}'s beat state: {error}")
    upcoming = None
    if not spec.suspend:
        after = max(fired if fired is not None else float("-inf"), float(entry.get("activeSince", now)))
        upcoming = _time(next_slot(schedule, after))
    if not beat_leads:
        ready = Condition.false(Ready.TYPE, Ready.BEAT_NOT_RUNNING, f"the beat of TaskQueue {tq.name} "
                                f"({naming.beat_name(tq.name)}) is not running (no heartbeat)")
    elif entry.get("generation") != identity.generation:
        ready = Condition.false(Ready.TYPE, Ready.BEAT_NOT_RUNNING,
                                f"the beat of TaskQueue {tq.name} has not taken this change yet")
    elif spec.suspend:
        ready = Condition.true(Ready.TYPE, Ready.SUSPENDED, f"suspended: the beat of TaskQueue {tq.name} sends no "
                               "runs until spec.suspend is false (missed runs are not caught up)")
    else:
        ready = Condition.true(Ready.TYPE, Ready.SCHEDULED, f"the beat of TaskQueue {tq.name} sends {spec.task} "
                               f"{schedule.describe()}" + _queue_note(spec, tq.name, tq_spec))
    return Outcome(ready, known=True, last=_time(fired), next=upcoming)


def sync_job(runtime: Runtime, body: Mapping[str, Any], taskqueue: Mapping[str, Any] | None,
             children: Children, now: float) -> Outcome:
    """Bring the job's entry in its TaskQueue's beat state up to date (write it, or take out an
    entry an edit made invalid) and find what its status says."""
    try:
        spec, schedule = parse_periodicjob(body.get("spec"))
    except SpecError as error:
        remove_from_taskqueue(runtime, body, taskqueue, children.values())
        reason = Ready.INVALID_SCHEDULE if error.field in SCHEDULE_FIELDS else Ready.INVALID_SPEC
        return Outcome(Condition.false(Ready.TYPE, reason, str(error)), known=True)
    if taskqueue is None:
        return _taskqueue_not_found(spec, (body.get("metadata") or {}).get("namespace", ""))
    return _sync_with_taskqueue(runtime, body, spec, schedule, taskqueue, children, now)


def compose_status(body: Mapping[str, Any], outcome: Outcome, now: datetime.datetime) -> dict[str, Any]:
    previous = body.get("status") or {}
    generation = int((body.get("metadata") or {}).get("generation") or 0)
    if outcome.known:
        times = {"lastScheduleTime": outcome.last, "nextScheduleTime": outcome.next}
    else:
        times = {key: previous.get(key) for key in TIME_FIELDS}
    return STATUS.compose(previous, [outcome.ready], generation=generation, now=now,
                          fields={"observedGeneration": generation, **times})


# --- lookups in the handlers' indexes -------------------------------------------------------------

Located = tuple[dict[str, Any] | None, list[dict[str, Any]]]


def taskqueue_of(spec: Mapping[str, Any], namespace: str,
                 taskqueues_by_name: Mapping[tuple[str, str], Iterable[dict[str, Any]]],
                 *children_by_owner: Mapping[str, Iterable[dict[str, Any]]]) -> Located:
    """The TaskQueue a PeriodicJob spec names (None if missing) and that TaskQueue's children,
    looked up in the handlers' indexes (TaskQueues by (namespace, name), children by owner uid)."""
    reference = (spec.get("taskQueueRef") or {}).get("name")
    found = list(taskqueues_by_name.get((namespace, reference), [])) if reference else []
    if not found:
        return None, []
    taskqueue = found[0]
    uid = taskqueue["metadata"]["uid"]
    return taskqueue, [item for index in children_by_owner for item in index.get(uid, [])]


def taskqueue_left(spec: Mapping[str, Any], previous: Mapping[str, Any] | None, namespace: str,
                   taskqueues_by_name: Mapping[tuple[str, str], Iterable[dict[str, Any]]],
                   *children_by_owner: Mapping[str, Iterable[dict[str, Any]]]) -> Located | None:
    """The TaskQueue an edit moved the PeriodicJob away from, if the edit changed taskQueueRef."""
    before = (previous or {}).get("taskQueueRef")
    if before in (None, spec.get("taskQueueRef")):
        return None
    return taskqueue_of(previous or {}, namespace, taskqueues_by_name, *children_by_owner)


# --- the passes -----------------------------------------------------------------------------------

def reconcile_periodicjob(runtime: Runtime, body: Mapping[str, Any], taskqueue: Mapping[str, Any] | None,
                          children: Iterable[Manifest], now: float | None = None,
                          moved_from: tuple[Mapping[str, Any] | None, Iterable[Manifest]] | None = None) -> None:
    """One level-triggered pass over a PeriodicJob: its entry in the beat state, then its status.

    `moved_from`: the TaskQueue (and its children) spec.taskQueueRef named before this edit.
    """
    identity = ObjectIdentity.from_body(body)
    moment = time.time() if now is None else now
    going_away = unless_namespace_terminating(identity.namespace, f"PeriodicJob {identity.name}")
    with runtime.exclusively(identity.uid) as present, going_away:
        if not present:
            return  # deleted while this pass waited: its entry was taken out
        if moved_from is not None:
            remove_from_taskqueue(runtime, body, *moved_from)
        outcome = sync_job(runtime, body, taskqueue, Children(children), moment)
        status = compose_status(body, outcome, datetime.datetime.fromtimestamp(moment, datetime.timezone.utc))
        publish(runtime.kube, body, STATUS, status, runtime.settings.field_manager, EVENTS,
                runtime.status_writes)


def remove_from_taskqueue(runtime: Runtime, body: Mapping[str, Any], taskqueue: Mapping[str, Any] | None,
                          children: Iterable[Manifest]) -> None:
    """Take the PeriodicJob out of `taskqueue`'s running beat now (deleted, or moved to another
    TaskQueue); the TaskQueue's sync would within a resync anyway. Best effort: an unreachable
    state store is left to that sync."""
    if taskqueue is None:
        return
    identity = ObjectIdentity.from_body(body)
    tq = ObjectIdentity.from_body(taskqueue)
    location = state_location(tq, Children(children))
    if location is None:
        return
    try:
        if runtime.beat_state.remove_job(location, identity.name):
            logger.info("PeriodicJob %s/%s: removed from TaskQueue %s's beat", identity.namespace, identity.name,
                        tq.name)
    except BrokerUnavailable as error:
        logger.warning("PeriodicJob %s/%s: could not remove it from TaskQueue %s's beat now (%s); the "
                       "TaskQueue's next sync will", identity.namespace, identity.name, tq.name, error)


def forget_periodicjob(runtime: Runtime, body: Mapping[str, Any], taskqueue: Mapping[str, Any] | None,
                       children: Iterable[Manifest]) -> None:
    """The PeriodicJob is being deleted: once a pass under way has ended, take its entry out, after any
    pass of its TaskQueue under way (which may have read the job from the cache before its deletion;
    later passes leave the forgotten job out)."""
    runtime.forget(ObjectIdentity.from_body(body).uid)
    if taskqueue is None:
        return
    with runtime.exclusively(ObjectIdentity.from_body(taskqueue).uid) as present:
        if present:
            remove_from_taskqueue(runtime, body, taskqueue, children)


def forget_taskqueue(runtime: Runtime, taskqueue: Mapping[str, Any], children: Iterable[Manifest]) -> None:
    """The TaskQueue is being deleted: once a pass under way has ended (and no later one writes the
    state again), remove its schedule state, so a beat still running until garbage collection takes
    its pod sends nothing more, and nothing is left in a shared Redis. Best effort: the PeriodicJobs
    stay, and a TaskQueue of the same name starts afresh anyway (the entries name the TaskQueue's uid)."""
    identity = ObjectIdentity.from_body(taskqueue)
    runtime.forget(identity.uid)
    location = state_location(identity, Children(children))
    if location is None:
        return
    try:
        runtime.beat_state.delete(location)
    except BrokerUnavailable as error:
        logger.warning("TaskQueue %s/%s: could not remove its beat's schedule state (%s)", identity.namespace,
                       identity.name, error)
