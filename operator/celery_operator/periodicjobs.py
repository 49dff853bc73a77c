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
from typing import Any

from . import builders, conditions, naming
from .beat.jobs import DesiredJob, decode_entry, encode_entry, job_entry, parse_fired
from .beat.schedule import Schedule, next_slot, parse_schedule
from .broker import (
    BrokerUnavailable,
    delete_beat_state,
    is_redis_url,
    read_beat_state,
    remove_beat_job,
    write_beat_jobs,
)
from .builders import ChildKey, child_key
from .kube import Manifest
from .models import ObjectIdentity, PeriodicJobSpec, SpecError, TaskQueueSpec
from .runtime import Runtime

logger = logging.getLogger(__name__)

SCHEDULED = "Scheduled"
SUSPENDED = "Suspended"
TASKQUEUE_NOT_FOUND = "TaskQueueNotFound"
CUSTOM_SCHEDULER = "CustomScheduler"
INVALID_SCHEDULE = "InvalidSchedule"
INVALID_SPEC = "InvalidSpec"
BEAT_NOT_RUNNING = "BeatNotRunning"
SCHEDULE_FIELDS = ("spec", "spec.schedule", "spec.interval", "spec.timeZone")
CELERY_DEFAULT_QUEUE = "celery"


# --- shared with the TaskQueue's reconcile ------------------------------------------------------

@dataclass(frozen=True)
class StateLocation:
    """Where a TaskQueue's beat keeps its schedule: a Redis URL (from a Secret) and the key prefix."""

    url: str
    prefix: str


def state_location(identity: ObjectIdentity, children: Mapping[ChildKey, Manifest]) -> StateLocation | None:
    """The broker when it is Redis, else `<tq>-beat-state`; None while the Secret holding it is missing."""
    prefix = naming.beat_key_prefix(identity.namespace, identity.name)
    broker = children.get(("v1", "Secret", naming.broker_name(identity.name)))
    url = builders.decode_secret_value(broker, naming.BROKER_SECRET_URL_KEY) if broker else None
    if url is None:
        return None
    if is_redis_url(url):
        return StateLocation(url=url, prefix=prefix)
    state = children.get(("v1", "Secret", naming.beat_state_name(identity.name)))
    state_url = builders.decode_secret_value(state, naming.BROKER_SECRET_URL_KEY) if state else None
    return StateLocation(url=state_url, prefix=prefix) if state_url else None


def parse_job(spec: Mapping[str, Any] | None) -> tuple[PeriodicJobSpec, Schedule]:
    """A PeriodicJob's spec and timing. Raises SpecError naming the field."""
    parsed = PeriodicJobSpec.parse(spec)
    return parsed, parse_schedule(parsed.schedule, parsed.interval, parsed.time_zone)


def desired_jobs(periodicjobs: Iterable[Mapping[str, Any]]) -> dict[str, DesiredJob]:
    """The PeriodicJobs the beat should carry: every one whose spec and schedule are valid."""
    result: dict[str, DesiredJob] = {}
    for body in periodicjobs:
        metadata = body.get("metadata") or {}
        try:
            spec, _ = parse_job(body.get("spec"))
        except SpecError:
            continue  # reported on the PeriodicJob itself (InvalidSchedule / InvalidSpec)
        result[metadata["name"]] = DesiredJob(name=metadata["name"], spec=spec, uid=str(metadata.get("uid", "")),
                                              generation=int(metadata.get("generation") or 0))
    return result


# --- one PeriodicJob ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What one pass found: the Ready condition and, when the state was read, the schedule times."""

    ready: tuple[str, str, str]
    known: bool = False  # False: last/next could not be read; the previous values are restated
    last: str | None = None
    next: str | None = None


def _time(slot: float | None) -> str | None:
    if slot is None:
        return None
    return conditions.format_time(datetime.datetime.fromtimestamp(slot, datetime.timezone.utc))


def _queue_note(spec: PeriodicJobSpec, taskqueue: str, tq_spec: TaskQueueSpec) -> str:
    queues = {q.name for q in tq_spec.queues}
    if spec.queue is None and CELERY_DEFAULT_QUEUE not in queues:
        return (f"; note: without spec.queue the task goes to Celery's default queue {CELERY_DEFAULT_QUEUE!r} "
                f"(the beat does not load the app's task_routes), which no worker of TaskQueue {taskqueue} consumes")
    if spec.queue is not None and spec.queue not in queues:
        return f"; note: no worker of TaskQueue {taskqueue} consumes queue {spec.queue!r}"
    return ""


def _with_taskqueue(runtime: Runtime, body: Mapping[str, Any], spec: PeriodicJobSpec, schedule: Schedule,
                    taskqueue: Mapping[str, Any], children: Mapping[ChildKey, Manifest],
                    now: float) -> Outcome:
    identity = ObjectIdentity.from_body(body)
    tq = ObjectIdentity.from_body(taskqueue)
    try:
        tq_spec = TaskQueueSpec.parse(taskqueue.get("spec"))
    except SpecError as error:
        return Outcome(("False", BEAT_NOT_RUNNING, f"TaskQueue {tq.name} cannot run a beat: {error}"))
    if tq_spec.beat.custom_scheduler:
        return Outcome(("False", CUSTOM_SCHEDULER,
                        f"TaskQueue {tq.name} runs its own beat scheduler (spec.beat.scheduler: "
                        f"{tq_spec.beat.scheduler}); PeriodicJobs are not sent by it"))
    location = state_location(tq, children)
    if location is None:
        return Outcome(("False", BEAT_NOT_RUNNING, f"waiting for TaskQueue {tq.name}'s beat state store"))
    timeout = runtime.settings.broker_timeout_seconds
    try:
        state = read_beat_state(location.url, location.prefix, name=identity.name, timeout=timeout)
        current = state.jobs.get(identity.name)
        entry = job_entry(spec, uid=identity.uid, generation=identity.generation, task_queue_uid=tq.uid,
                          previous=decode_entry(current), now=now)
        text = encode_entry(entry)
        if text != current:
            skipped = write_beat_jobs(location.url, location.prefix, {identity.name: (current, text)}, {},
                                      timeout=timeout)
            if skipped:  # the TaskQueue's sync wrote it meanwhile: read what is there now
                state = read_beat_state(location.url, location.prefix, name=identity.name, timeout=timeout)
                entry = decode_entry(state.jobs.get(identity.name)) or entry
            else:
                logger.info("PeriodicJob %s/%s: schedule entry written (generation %d)", identity.namespace,
                            identity.name, identity.generation)
    except BrokerUnavailable as error:
        return Outcome(("False", BEAT_NOT_RUNNING, f"cannot reach TaskQueue {tq.name}'s beat state: {error}"))
    fired = parse_fired(state.fired.get(identity.name))
    last = _time(fired)
    upcoming = None
    if not spec.suspend:
        after = max(fired if fired is not None else float("-inf"), float(entry.get("activeSince", now)))
        upcoming = _time(next_slot(schedule, after))
    if state.heartbeat is None:
        ready = ("False", BEAT_NOT_RUNNING, f"the beat of TaskQueue {tq.name} ({naming.beat_name(tq.name)}) "
                                            "is not running (no heartbeat)")
    elif entry.get("generation") != identity.generation:
        ready = ("False", BEAT_NOT_RUNNING, f"the beat of TaskQueue {tq.name} has not taken this change yet")
    elif spec.suspend:
        ready = ("True", SUSPENDED, f"suspended: the beat of TaskQueue {tq.name} sends no runs until "
                                    "spec.suspend is false (missed runs are not caught up)")
    else:
        ready = ("True", SCHEDULED, f"the beat of TaskQueue {tq.name} sends {spec.task} {schedule.describe()}"
                                    + _queue_note(spec, tq.name, tq_spec))
    return Outcome(ready, known=True, last=last, next=upcoming)


def observe(runtime: Runtime, body: Mapping[str, Any], taskqueue: Mapping[str, Any] | None,
            children: Mapping[ChildKey, Manifest], now: float) -> Outcome:
    try:
        spec, schedule = parse_job(body.get("spec"))
    except SpecError as error:
        remove_from_taskqueue(runtime, body, taskqueue, children.values())  # an edit made it invalid
        reason = INVALID_SCHEDULE if error.field in SCHEDULE_FIELDS else INVALID_SPEC
        return Outcome(("False", reason, str(error)), known=True)
    if taskqueue is None:
        namespace = (body.get("metadata") or {}).get("namespace", "")
        return Outcome(("False", TASKQUEUE_NOT_FOUND,
                        f"spec.taskQueueRef.name: TaskQueue {spec.task_queue_name!r} does not exist in namespace "
                        f"{namespace}"), known=True)
    return _with_taskqueue(runtime, body, spec, schedule, taskqueue, children, now)


# --- status ---------------------------------------------------------------------------------------

TIME_FIELDS = ("lastScheduleTime", "nextScheduleTime")


def compose_status(body: Mapping[str, Any], outcome: Outcome, now: datetime.datetime) -> dict[str, Any]:
    previous = body.get("status") or {}
    generation = int((body.get("metadata") or {}).get("generation") or 0)
    status, reason, message = outcome.ready
    composed: dict[str, Any] = {
        "conditions": conditions.set_condition(
            [c for c in previous.get("conditions") or [] if c.get("type") == conditions.READY],
            type=conditions.READY, status=status, reason=reason, message=message,
            observed_generation=generation, now=now),
        "observedGeneration": generation,
    }
    if outcome.known:
        times = {"lastScheduleTime": outcome.last, "nextScheduleTime": outcome.next}
    else:
        times = {key: previous.get(key) for key in TIME_FIELDS}
    composed.update({key: value for key, value in times.items() if value is not None})
    return composed


def status_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    ready = [c for c in old.get("conditions") or [] if c.get("type") == conditions.READY]
    if conditions.conditions_differ(ready, new.get("conditions")):
        return True
    return any(old.get(key) != new.get(key) for key in ("observedGeneration", *TIME_FIELDS))


def _event_for(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, str, str] | None:
    before = conditions.get_condition(old.get("conditions"), conditions.READY) or {}
    after = conditions.get_condition(new.get("conditions"), conditions.READY) or {}
    if (before.get("status"), before.get("reason")) == (after.get("status"), after.get("reason")):
        return None
    if after.get("status") == "True":
        return "Normal", after.get("reason", SCHEDULED), after.get("message", "")
    return "Warning", after.get("reason", BEAT_NOT_RUNNING), after.get("message", "")


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


def reconcile_periodicjob(runtime: Runtime, body: Mapping[str, Any], taskqueue: Mapping[str, Any] | None,
                          children: Iterable[Manifest], now: float | None = None,
                          moved_from: tuple[Mapping[str, Any] | None, Iterable[Manifest]] | None = None) -> None:
    """One level-triggered pass over a PeriodicJob: its entry in the beat state, then its status.

    `moved_from`: the TaskQueue (and its children) spec.taskQueueRef named before this edit.
    """
    identity = ObjectIdentity.from_body(body)
    moment = time.time() if now is None else now
    with runtime.lock_for(identity.uid):
        if moved_from is not None:
            remove_from_taskqueue(runtime, body, *moved_from)
        outcome = observe(runtime, body, taskqueue, {child_key(c): c for c in children}, moment)
        old = body.get("status") or {}
        new = compose_status(body, outcome, datetime.datetime.fromtimestamp(moment, datetime.timezone.utc))
        if not status_changed(old, new):
            return
        runtime.kube.publish_status(body, new, runtime.settings.field_manager, _event_for(old, new))


def remove_from_taskqueue(runtime: Runtime, body: Mapping[str, Any], taskqueue: Mapping[str, Any] | None,
                          children: Iterable[Manifest]) -> None:
    """Take the PeriodicJob out of `taskqueue`'s running beat now (deleted, or moved to another
    TaskQueue); the TaskQueue's sync would within a resync anyway. Best effort: an unreachable
    state store is left to that sync."""
    if taskqueue is None:
        return
    identity = ObjectIdentity.from_body(body)
    tq = ObjectIdentity.from_body(taskqueue)
    location = state_location(tq, {child_key(c): c for c in children})
    if location is None:
        return
    try:
        if remove_beat_job(location.url, location.prefix, identity.name,
                           timeout=runtime.settings.broker_timeout_seconds):
            logger.info("PeriodicJob %s/%s: removed from TaskQueue %s's beat", identity.namespace, identity.name,
                        tq.name)
    except BrokerUnavailable as error:
        logger.warning("PeriodicJob %s/%s: could not remove it from TaskQueue %s's beat now (%s); the "
                       "TaskQueue's next sync will", identity.namespace, identity.name, tq.name, error)


def forget_periodicjob(runtime: Runtime, body: Mapping[str, Any], taskqueue: Mapping[str, Any] | None,
                       children: Iterable[Manifest]) -> None:
    """The PeriodicJob is being deleted."""
    try:
        remove_from_taskqueue(runtime, body, taskqueue, children)
    finally:
        runtime.forget(ObjectIdentity.from_body(body).uid)


def forget_taskqueue_schedule(runtime: Runtime, taskqueue: Mapping[str, Any], children: Iterable[Manifest]) -> None:
    """The TaskQueue is being deleted: remove its schedule state, so a beat still running until
    garbage collection takes its pod sends nothing more, and nothing is left in a shared Redis.
    Best effort: the PeriodicJobs stay, and a TaskQueue of the same name starts afresh anyway
    (the entries name the TaskQueue's uid)."""
    identity = ObjectIdentity.from_body(taskqueue)
    location = state_location(identity, {child_key(c): c for c in children})
    if location is None:
        return
    try:
        delete_beat_state(location.url, location.prefix, timeout=runtime.settings.broker_timeout_seconds)
    except BrokerUnavailable as error:
        logger.warning("TaskQueue %s/%s: could not remove its beat's schedule state (%s)", identity.namespace,
                       identity.name, error)
