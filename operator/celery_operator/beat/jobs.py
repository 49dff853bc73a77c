"""The job definitions the operator keeps in Redis for a TaskQueue's beat. Pure.

Of a TaskQueue's beat state (keys and I/O: beat/state.py) this module owns the format:

- an entry of hash `jobs`: PeriodicJob name -> JSON definition, written by the operator only (the
  TaskQueue's reconcile syncs the whole hash to the valid PeriodicJobs; a PeriodicJob's own handler
  writes its entry at once when it changes). Fields: task, schedule | interval, timeZone, args,
  kwargs, queue, expiresSeconds, suspend, uid, generation, taskQueueUid, activeSince.
- a value of hash `fired`: the last slot sent (epoch seconds), written by the beat only, through an
  atomic claim (see runner.py).

`activeSince` is when the current schedule took effect: set when the job is first written, when
its schedule, interval or time zone changes, when it is resumed from suspend, and when the
PeriodicJob or the TaskQueue was recreated (another uid). The beat sends only slots after
max(fired, activeSince): nothing fires retroactively for a time before the job (or its schedule)
existed, and a resumed job does not catch up what was missed while suspended.

Entries are canonical JSON (sorted keys, no spaces), so "differs" is a string comparison, and the
beat's claim can check that the definition it acted on is still the one in Redis.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ..models import PeriodicJobSpec, SpecError
from .schedule import Schedule, format_slot, parse_schedule

SCHEDULE_FIELDS: Final = ("schedule", "interval", "timeZone")


def encode_entry(entry: Mapping[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def decode_entry(text: str | bytes | None) -> dict[str, Any] | None:
    """The entry, or None when absent or unreadable (an unreadable one is rewritten)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def job_definition(spec: PeriodicJobSpec, *, uid: str, generation: int, task_queue_uid: str) -> dict[str, Any]:
    """Everything of the entry but activeSince."""
    definition: dict[str, Any] = {
        "task": spec.task,
        "timeZone": spec.time_zone,
        "args": list(spec.args),
        "kwargs": dict(spec.kwargs),
        "expiresSeconds": spec.expires_seconds,
        "suspend": spec.suspend,
        "uid": uid,
        "generation": generation,
        "taskQueueUid": task_queue_uid,
    }
    if spec.schedule is not None:
        definition["schedule"] = spec.schedule
    if spec.interval is not None:
        definition["interval"] = spec.interval
    if spec.queue is not None:
        definition["queue"] = spec.queue
    return definition


def _same_schedule(previous: Mapping[str, Any], definition: Mapping[str, Any]) -> bool:
    """Whether `definition` continues `previous`: same objects, same timing, not a resume."""
    if previous.get("uid") != definition["uid"] or previous.get("taskQueueUid") != definition["taskQueueUid"]:
        return False
    if any(previous.get(key) != definition.get(key) for key in SCHEDULE_FIELDS):
        return False
    resumed = bool(previous.get("suspend")) and not definition["suspend"]
    return not resumed and isinstance(previous.get("activeSince"), (int, float))


def job_entry(spec: PeriodicJobSpec, *, uid: str, generation: int, task_queue_uid: str,
              previous: Mapping[str, Any] | None, now: float) -> dict[str, Any]:
    """The entry for a PeriodicJob, given the entry now in Redis (`previous`, None if none)."""
    definition = job_definition(spec, uid=uid, generation=generation, task_queue_uid=task_queue_uid)
    if previous is not None and _same_schedule(previous, definition):
        definition["activeSince"] = previous["activeSince"]
    else:
        definition["activeSince"] = round(now, 3)
    return definition


@dataclass(frozen=True)
class DesiredJob:
    """A valid PeriodicJob of the TaskQueue, as the reconciler sees it."""

    name: str
    spec: PeriodicJobSpec
    uid: str
    generation: int


@dataclass(frozen=True)
class SyncPlan:
    """Writes that make the `jobs` hash equal the desired jobs; each names the value it replaces
    (None = absent), so a concurrent writer's newer value is never overwritten blindly."""

    upserts: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    removals: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.upserts and not self.removals


def parse_periodicjob(spec: Mapping[str, Any] | None) -> tuple[PeriodicJobSpec, Schedule]:
    """A PeriodicJob's spec and timing. Raises SpecError naming the field."""
    parsed = PeriodicJobSpec.parse(spec)
    return parsed, parse_schedule(parsed.schedule, parsed.interval, parsed.time_zone)


def desired_jobs(periodicjobs: Iterable[Mapping[str, Any]]) -> dict[str, DesiredJob]:
    """The PeriodicJobs a beat should carry: every one whose spec and schedule are valid (the others
    are reported on the PeriodicJob itself: InvalidSchedule, InvalidSpec)."""
    result: dict[str, DesiredJob] = {}
    for body in periodicjobs:
        metadata = body.get("metadata") or {}
        try:
            spec, _ = parse_periodicjob(body.get("spec"))
        except SpecError:
            continue
        result[metadata["name"]] = DesiredJob(name=metadata["name"], spec=spec, uid=str(metadata.get("uid", "")),
                                              generation=int(metadata.get("generation") or 0))
    return result


# The TaskQueue's sync works from the operator's cache of PeriodicJobs, which may lag a moment
# behind the PeriodicJob's own handler (that writes its entry the moment the object changes). So
# the sync never replaces an entry with an older generation of the same object, and leaves alone an
# entry that took effect less than this long ago and is not (yet) in its cache: a PeriodicJob just
# created or moved here. Deleted and moved-away PeriodicJobs are removed by their own handlers at
# once; the sync is the fallback.
FRESH_ENTRY_GRACE_SECONDS: Final = 30.0


def _newer(entry: Mapping[str, Any] | None, job: DesiredJob) -> bool:
    return (entry is not None and entry.get("uid") == job.uid
            and isinstance(entry.get("generation"), int) and entry["generation"] > job.generation)


def _fresh(entry: Mapping[str, Any] | None, now: float) -> bool:
    since = entry.get("activeSince") if entry is not None else None
    return isinstance(since, (int, float)) and now - since < FRESH_ENTRY_GRACE_SECONDS


def plan_sync(current: Mapping[str, str], desired: Mapping[str, DesiredJob], *, task_queue_uid: str,
              now: float) -> SyncPlan:
    """What to write so that `jobs` holds exactly `desired` (only what differs)."""
    upserts: dict[str, tuple[str | None, str]] = {}
    for name, job in desired.items():
        old = current.get(name)
        previous = decode_entry(old)
        if _newer(previous, job):
            continue
        entry = job_entry(job.spec, uid=job.uid, generation=job.generation, task_queue_uid=task_queue_uid,
                          previous=previous, now=now)
        text = encode_entry(entry)
        if text != old:
            upserts[name] = (old, text)
    removals = {name: old for name, old in current.items()
                if name not in desired and not _fresh(decode_entry(old), now)}
    return SyncPlan(upserts=upserts, removals=removals)


# --- what the beat reads back --------------------------------------------------------------------

@dataclass(frozen=True)
class BeatJob:
    """One entry of `jobs`, parsed; `raw` is the exact text (the claim compares it)."""

    name: str
    task: str
    schedule: Schedule
    active_since: float
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    expires_seconds: int = 0
    suspend: bool = False
    generation: int = 0
    uid: str = ""
    raw: str = ""


def parse_job(name: str, raw: str) -> BeatJob:
    """Parse one `jobs` entry. Raises ValueError (SpecError included) for an entry it cannot run."""
    entry = decode_entry(raw)
    if entry is None:
        raise ValueError(f"job {name!r}: the entry is not a JSON object")
    task = entry.get("task")
    active_since = entry.get("activeSince")
    if not isinstance(task, str) or not task:
        raise ValueError(f"job {name!r}: no task")
    if not isinstance(active_since, (int, float)) or isinstance(active_since, bool):
        raise ValueError(f"job {name!r}: no activeSince")
    args, kwargs = entry.get("args") or [], entry.get("kwargs") or {}
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError(f"job {name!r}: args must be a list and kwargs an object")
    expires = entry.get("expiresSeconds") or 0
    if not isinstance(expires, int) or expires < 0:
        raise ValueError(f"job {name!r}: expiresSeconds must be a whole number >= 0")
    try:
        schedule = parse_schedule(entry.get("schedule"), entry.get("interval"), entry.get("timeZone"))
    except SpecError as error:
        raise ValueError(f"job {name!r}: {error}") from None
    return BeatJob(
        name=name, task=task, schedule=schedule, active_since=float(active_since), args=tuple(args),
        kwargs=dict(kwargs), queue=entry.get("queue") or None, expires_seconds=expires,
        suspend=bool(entry.get("suspend")), generation=int(entry.get("generation") or 0),
        uid=str(entry.get("uid") or ""), raw=raw,
    )


def format_fired(slot: float) -> str:
    """A slot as stored in `fired`: epoch seconds, milliseconds only when there are some."""
    ms = round(slot * 1000)
    seconds, rest = divmod(ms, 1000)
    return str(seconds) if rest == 0 else f"{seconds}.{rest:03d}"


def parse_fired(text: str | bytes | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def task_id(namespace: str, job: str, slot: float) -> str:
    """The Celery task id of one run: `<namespace>/<job>@<slot in ISO 8601 UTC>`.

    Deterministic: the same run always has the same id (a consumer can deduplicate by it), and it
    tells which job and which slot a task came from. The namespace keeps the ids of same-named
    PeriodicJobs of two namespaces sharing a result backend apart.
    """
    return f"{namespace}/{job}@{format_slot(slot)}"


def split_task_id(value: str) -> tuple[str, str, str] | None:
    """(namespace, job, slot text) of a `task_id`, or None for another shape."""
    head, at, slot = value.rpartition("@")
    namespace, slash, job = head.partition("/")
    if not at or not slash or not job:
        return None
    return namespace, job, slot
