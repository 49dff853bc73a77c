"""The beat's pure parts: slots of intervals and cron schedules (time zones, daylight saving),
catch-up bounds, the job entries the operator writes (activeSince), the task ids, the beat builder,
and the status pieces that go with them. Fixed clocks only."""

from __future__ import annotations

import base64
import copy
import datetime
import json
from typing import Any

import pytest

from celery_operator import builders, conditions, periodicjobs, reconcile
from celery_operator.beat.jobs import (
    DesiredJob,
    decode_entry,
    desired_jobs,
    encode_entry,
    format_fired,
    job_entry,
    parse_fired,
    parse_job,
    plan_sync,
    split_task_id,
    task_id,
)
from celery_operator.beat.schedule import (
    Schedule,
    due_slots,
    format_slot,
    next_slot,
    parse_schedule,
    parse_slot,
)
from celery_operator.beat.state import BeatState, StateLocation
from celery_operator.builders.beat import BeatOptions, build_beat, custom_beat_command
from celery_operator.children import Children
from celery_operator.conditions import Condition
from celery_operator.models import ObjectIdentity, PeriodicJobSpec, SpecError, parse_taskqueue_spec

pytestmark = pytest.mark.unit

UTC = datetime.timezone.utc


def at(text: str) -> float:
    """Epoch seconds of an ISO 8601 time (UTC unless it says otherwise)."""
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def iso(slot: float | None) -> str | None:
    return None if slot is None else format_slot(slot)


def cron(expression: str, zone: str = "UTC") -> Schedule:
    return parse_schedule(expression, None, zone)


def every(interval: str) -> Schedule:
    return parse_schedule(None, interval, "UTC")


# --- intervals -------------------------------------------------------------------------------------

def test_interval_slots_are_multiples_of_the_interval_since_the_epoch() -> None:
    two = every("2s")
    assert iso(next_slot(two, at("2026-11-24T08:00:01Z"))) == "2026-11-24T08:00:02Z"
    assert iso(next_slot(two, at("2026-11-24T08:00:02Z"))) == "2026-11-24T08:00:04Z", "strictly after"
    assert iso(next_slot(two, at("2026-11-24T08:00:01.999Z"))) == "2026-11-24T08:00:02Z"
    hourly = every("1h")
    assert iso(next_slot(hourly, at("2026-11-24T08:20:00Z"))) == "2026-11-24T09:00:00Z", "wall-clock aligned"
    ninety = every("1m30s")
    assert next_slot(ninety, 0) == 90 and next_slot(ninety, 90) == 180


def test_a_fractional_interval_keeps_millisecond_slots_exact() -> None:
    schedule = every("1.5s")
    slots = [next_slot(schedule, 0)]
    for _ in range(5):
        slots.append(next_slot(schedule, slots[-1]))
    assert slots == [1.5, 3.0, 4.5, 6.0, 7.5, 9.0]
    slot = next_slot(schedule, at("2026-11-24T08:00:00Z"))
    assert iso(slot) == "2026-11-24T08:00:01.500Z"
    assert parse_slot(iso(slot)) == slot
    assert parse_fired(format_fired(slot)) == slot and format_fired(slot).endswith(".500")
    assert format_fired(at("2026-11-24T08:00:00Z")) == str(int(at("2026-11-24T08:00:00Z")))


def test_due_slots_are_those_after_the_last_up_to_now_oldest_first() -> None:
    two = every("2s")
    start = at("2026-11-24T08:00:00Z")
    assert [iso(s) for s in due_slots(two, start, start + 7, limit=100)] == [
        "2026-11-24T08:00:02Z", "2026-11-24T08:00:04Z", "2026-11-24T08:00:06Z"]
    assert due_slots(two, start, start + 1.9, limit=100) == []
    assert due_slots(two, start, start, limit=100) == []
    assert due_slots(two, start, start + 2, limit=100) == [start + 2], "a slot exactly now is due"


def test_catch_up_is_bounded_to_the_most_recent_slots() -> None:
    two = every("2s")
    start = at("2026-11-24T08:00:00Z")
    day_later = start + 86400
    slots = due_slots(two, start, day_later, limit=5)
    assert slots == [day_later - 8, day_later - 6, day_later - 4, day_later - 2, day_later]
    assert due_slots(two, start, day_later, limit=0) == []
    minutely = cron("* * * * *")
    slots = due_slots(minutely, start, day_later, limit=3)
    assert [iso(s) for s in slots] == ["2026-11-25T07:58:00Z", "2026-11-25T07:59:00Z", "2026-11-25T08:00:00Z"]


# --- cron -------------------------------------------------------------------------------------------

def test_cron_slots_in_utc_and_macros() -> None:
    assert iso(next_slot(cron("0 3 * * *"), at("2026-11-24T08:00:00Z"))) == "2026-11-25T03:00:00Z"
    assert iso(next_slot(cron("@hourly"), at("2026-11-24T08:00:00Z"))) == "2026-11-24T09:00:00Z"
    assert iso(next_slot(cron("@daily"), at("2026-11-24T08:00:00Z"))) == "2026-11-25T00:00:00Z"
    assert iso(next_slot(cron("@weekly"), at("2026-11-24T08:00:00Z"))) == "2026-11-29T00:00:00Z"  # a Sunday
    assert iso(next_slot(cron("@monthly"), at("2026-11-24T08:00:00Z"))) == "2026-12-01T00:00:00Z"
    assert iso(next_slot(cron("@yearly"), at("2026-11-24T08:00:00Z"))) == "2027-01-01T00:00:00Z"
    assert iso(next_slot(cron("*/15 9-17 * * MON-FRI"), at("2026-11-28T12:00:00Z"))) == "2026-11-30T09:00:00Z"
    minutely = cron("* * * * *")
    assert iso(next_slot(minutely, at("2026-11-24T08:00:59.5Z"))) == "2026-11-24T08:01:00Z"
    assert iso(next_slot(minutely, at("2026-11-24T08:01:00Z"))) == "2026-11-24T08:02:00Z"
    assert [iso(s) for s in due_slots(minutely, at("2026-11-24T08:00:00Z"), at("2026-11-24T08:03:00Z"), 10)] == [
        "2026-11-24T08:01:00Z", "2026-11-24T08:02:00Z", "2026-11-24T08:03:00Z"]


@pytest.mark.parametrize(("zone", "expression", "after", "expected"), [
    # Europe/Berlin springs forward on 2026-03-29 (02:00 CET -> 03:00 CEST): 03:00 local moves from 02:00Z to 01:00Z
    ("Europe/Berlin", "0 3 * * *", "2026-03-28T12:00:00Z", ["2026-03-29T01:00:00Z", "2026-03-30T01:00:00Z"]),
    ("Europe/Berlin", "0 3 * * *", "2026-03-27T12:00:00Z", ["2026-03-28T02:00:00Z", "2026-03-29T01:00:00Z"]),
    # ... and falls back on 2026-10-25 (03:00 CEST -> 02:00 CET): 03:00 local moves from 01:00Z to 02:00Z
    ("Europe/Berlin", "0 3 * * *", "2026-10-24T00:00:00Z", ["2026-10-24T01:00:00Z", "2026-10-25T02:00:00Z"]),
    # America/New_York: EST -> EDT on 2026-03-08, EDT -> EST on 2026-11-01; 09:00 local every day
    ("America/New_York", "0 9 * * *", "2026-03-07T00:00:00Z", ["2026-03-07T14:00:00Z", "2026-03-08T13:00:00Z"]),
    ("America/New_York", "0 9 * * *", "2026-10-31T00:00:00Z", ["2026-10-31T13:00:00Z", "2026-11-01T14:00:00Z"]),
])
def test_cron_in_a_time_zone_across_daylight_saving(zone: str, expression: str, after: str,
                                                     expected: list[str]) -> None:
    schedule = cron(expression, zone)
    first = next_slot(schedule, at(after))
    assert [iso(first), iso(next_slot(schedule, first))] == expected


def test_a_skipped_local_time_runs_right_after_the_gap() -> None:
    # 02:30 does not exist in Berlin on 2026-03-29: the run comes at 03:00 CEST (01:00Z), once.
    schedule = cron("30 2 * * *", "Europe/Berlin")
    slots = due_slots(schedule, at("2026-03-27T12:00:00Z"), at("2026-03-31T12:00:00Z"), 10)
    assert [iso(s) for s in slots] == ["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z",
                                       "2026-03-31T00:30:00Z"]


def test_a_repeated_local_time_runs_once_for_a_fixed_hour_and_every_real_hour_otherwise() -> None:
    # 02:30 happens twice in Berlin on 2026-10-25 (CEST, then CET): a daily job runs once.
    daily = cron("30 2 * * *", "Europe/Berlin")
    slots = due_slots(daily, at("2026-10-23T12:00:00Z"), at("2026-10-27T12:00:00Z"), 10)
    assert [iso(s) for s in slots] == ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z",
                                       "2026-10-27T01:30:00Z"]
    assert iso(next_slot(daily, at("2026-10-25T00:30:00Z"))) == "2026-10-26T01:30:00Z"
    # An hourly job runs every real hour, both 02:00s included.
    hourly = cron("0 * * * *", "Europe/Berlin")
    slots = due_slots(hourly, at("2026-10-24T23:30:00Z"), at("2026-10-25T03:30:00Z"), 10)
    assert [iso(s) for s in slots] == ["2026-10-25T00:00:00Z", "2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z",
                                       "2026-10-25T03:00:00Z"]
    # New York falls back at 06:00Z on 2026-11-01: every quarter hour is a real quarter hour.
    quarter = cron("*/15 * * * *", "America/New_York")
    slots = due_slots(quarter, at("2026-11-01T05:20:00Z"), at("2026-11-01T06:20:00Z"), 10)
    assert [iso(s) for s in slots] == ["2026-11-01T05:30:00Z", "2026-11-01T05:45:00Z", "2026-11-01T06:00:00Z",
                                       "2026-11-01T06:15:00Z"]


def test_next_and_due_agree() -> None:
    """Stepping with next_slot gives exactly the due slots, across both Berlin transitions."""
    for schedule in (cron("30 2 * * *", "Europe/Berlin"), cron("0 */3 * * *", "Europe/Berlin"),
                     cron("45 1,2,3 * * *", "America/New_York"), every("7s")):
        start, end = at("2026-03-27T00:00:00Z"), at("2026-04-01T00:00:00Z")
        stepped, cursor = [], start
        while (cursor := next_slot(schedule, cursor)) is not None and cursor <= end:
            stepped.append(cursor)
        assert due_slots(schedule, start, end, limit=100_000) == stepped, schedule


@pytest.mark.parametrize(("schedule", "interval", "zone", "field"), [
    ("61 * * * *", None, "UTC", "spec.schedule"),
    ("0 0 31 2 *", None, "UTC", "spec.schedule"),  # never happens
    ("R * * * *", None, "UTC", "spec.schedule"),  # croniter's random extension: refused
    ("H * * * *", None, "UTC", "spec.schedule"),  # croniter's hashed extension: refused
    ("0 3 * *", None, "UTC", "spec.schedule"),
    ("0 3 * * *", None, "Mars/Olympus", "spec.timeZone"),
    ("0 3 * * *", None, "../../etc/passwd", "spec.timeZone"),
    (None, "500ms", "UTC", "spec.interval"),
    (None, "soon", "UTC", "spec.interval"),
    (None, None, "UTC", "spec"),
    ("0 3 * * *", "1m", "UTC", "spec"),
])
def test_invalid_schedules_name_the_field(schedule: str | None, interval: str | None, zone: str, field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_schedule(schedule, interval, zone)
    assert caught.value.field == field
    assert str(caught.value).startswith(field + ":")


def test_valid_schedules_parse() -> None:
    assert parse_schedule("0 3 * JAN,jul mon-fri", None, "Asia/Kolkata").cron == "0 3 * JAN,jul mon-fri"
    assert parse_schedule("0 3 L * *", None, "UTC").cron == "0 3 L * *"
    assert parse_schedule("@daily", None, None) == Schedule(cron="0 0 * * *", time_zone="UTC")
    assert parse_schedule(None, "1h30m", "UTC").interval_ms == 5_400_000
    assert every("30s").describe() == "every 30s"
    assert cron("0 3 * * *", "Europe/Berlin").describe() == "on '0 3 * * *' in Europe/Berlin"


# --- the job entries the operator writes -------------------------------------------------------------

PJ_SPEC = {"taskQueueRef": {"name": "shop"}, "task": "myapp.tasks.record", "interval": "2s", "timeZone": "UTC",
           "args": ["runs", 1], "kwargs": {"seconds": 0}, "queue": "jobs", "suspend": False, "expiresSeconds": 30}


def pj(**changes: Any) -> PeriodicJobSpec:
    spec = copy.deepcopy(PJ_SPEC)
    spec.update(changes)
    for key in [k for k, v in spec.items() if v is None]:
        del spec[key]
    return PeriodicJobSpec.parse(spec)


def entry(spec: PeriodicJobSpec, previous: dict[str, Any] | None, now: float, uid: str = "pj-1",
          generation: int = 1, tq_uid: str = "tq-1") -> dict[str, Any]:
    return job_entry(spec, uid=uid, generation=generation, task_queue_uid=tq_uid, previous=previous, now=now)


def test_job_entry_from_a_periodicjob_spec() -> None:
    built = entry(pj(), None, now=1000.0004)
    assert built == {"task": "myapp.tasks.record", "interval": "2s", "timeZone": "UTC", "args": ["runs", 1],
                     "kwargs": {"seconds": 0}, "queue": "jobs", "suspend": False, "expiresSeconds": 30,
                     "uid": "pj-1", "generation": 1, "taskQueueUid": "tq-1", "activeSince": 1000.0}
    text = encode_entry(built)
    assert json.loads(text) == built and " " not in text, "canonical: compact, sorted"
    assert list(json.loads(text)) == sorted(built)
    cron_entry = entry(pj(interval=None, schedule="0 3 * * *", timeZone="Europe/Berlin", queue=None), None, 5.0)
    assert "interval" not in cron_entry and "queue" not in cron_entry
    assert (cron_entry["schedule"], cron_entry["timeZone"]) == ("0 3 * * *", "Europe/Berlin")

    job = parse_job("every-2s", text)
    assert (job.name, job.task, job.args, dict(job.kwargs), job.queue, job.expires_seconds, job.suspend) == (
        "every-2s", "myapp.tasks.record", ("runs", 1), {"seconds": 0}, "jobs", 30, False)
    assert job.schedule == every("2s") and job.active_since == 1000.0 and job.raw == text
    with pytest.raises(ValueError, match="not a valid cron"):
        parse_job("bad", encode_entry({**built, "interval": None, "schedule": "99 * * * *"}))
    assert decode_entry("not json") is None and decode_entry(None) is None


@pytest.mark.parametrize(("change", "kept"), [
    (dict(args=["other"]), True),
    (dict(kwargs={"x": 1}), True),
    (dict(task="myapp.tasks.add"), True),
    (dict(queue="other"), True),
    (dict(expiresSeconds=0), True),
    (dict(suspend=True), True),  # suspending keeps it; resuming restarts it (below)
    (dict(interval="1s"), False),
    (dict(interval=None, schedule="* * * * *"), False),
    (dict(timeZone="Europe/Berlin"), False),
])
def test_active_since_moves_only_when_the_schedule_changes(change: dict[str, Any], kept: bool) -> None:
    first = entry(pj(), None, now=1000.0)
    later = entry(pj(**change), first, now=2000.0, generation=2)
    assert later["generation"] == 2
    assert later["activeSince"] == (1000.0 if kept else 2000.0)


def test_active_since_restarts_on_resume_and_on_recreated_objects() -> None:
    first = entry(pj(), None, now=1000.0)
    suspended = entry(pj(suspend=True), first, now=2000.0, generation=2)
    assert suspended["activeSince"] == 1000.0
    resumed = entry(pj(suspend=False), suspended, now=3000.0, generation=3)
    assert resumed["activeSince"] == 3000.0, "no catching up of what was missed while suspended"
    assert entry(pj(), first, now=4000.0, uid="pj-2")["activeSince"] == 4000.0, "a recreated PeriodicJob"
    assert entry(pj(), first, now=4000.0, tq_uid="tq-2")["activeSince"] == 4000.0, "a recreated TaskQueue"
    assert entry(pj(), {**first, "activeSince": "x"}, now=5000.0)["activeSince"] == 5000.0


def test_plan_sync_writes_only_what_differs() -> None:
    desired = {"a": DesiredJob("a", pj(), "uid-a", 1), "b": DesiredJob("b", pj(interval="5s"), "uid-b", 4)}
    plan = plan_sync({}, desired, task_queue_uid="tq-1", now=100.0)
    assert set(plan.upserts) == {"a", "b"} and plan.removals == {}
    assert all(old is None for old, _ in plan.upserts.values())
    current = {name: new for name, (_, new) in plan.upserts.items()}
    assert plan_sync(current, desired, task_queue_uid="tq-1", now=200.0).empty, "settled: nothing to write"

    current["gone"] = encode_entry(entry(pj(), None, 1.0, uid="uid-gone"))
    desired["a"] = DesiredJob("a", pj(args=["changed"]), "uid-a", 2)
    plan = plan_sync(current, desired, task_queue_uid="tq-1", now=300.0)
    assert set(plan.upserts) == {"a"} and set(plan.removals) == {"gone"}
    old, new = plan.upserts["a"]
    assert old == current["a"], "compare-and-set against what was read"
    assert json.loads(new)["activeSince"] == 100.0 and json.loads(new)["args"] == ["changed"]
    assert plan.removals["gone"] == current["gone"]


def test_plan_sync_never_undoes_what_a_periodicjobs_own_handler_just_wrote() -> None:
    """The sync works from a cache that may lag: it neither downgrades an entry to an older
    generation nor removes one that took effect moments ago (a PeriodicJob just created)."""
    newer = encode_entry(entry(pj(interval="1s"), None, now=1000.0, uid="uid-a", generation=5))
    stale = {"a": DesiredJob("a", pj(interval="2s"), "uid-a", 4)}
    assert plan_sync({"a": newer}, stale, task_queue_uid="tq-1", now=1001.0).empty
    recreated = {"a": DesiredJob("a", pj(), "uid-other", 1)}
    assert set(plan_sync({"a": newer}, recreated, task_queue_uid="tq-1", now=1001.0).upserts) == {"a"}
    just_created = encode_entry(entry(pj(), None, now=1000.0, uid="uid-b"))
    assert plan_sync({"b": just_created}, {}, task_queue_uid="tq-1", now=1010.0).empty
    assert set(plan_sync({"b": just_created}, {}, task_queue_uid="tq-1", now=1031.0).removals) == {"b"}


def test_task_ids_name_namespace_job_and_slot() -> None:
    slot = at("2026-11-24T03:00:00Z")
    identifier = task_id("shop-ns", "daily-cleanup", slot)
    assert identifier == "shop-ns/daily-cleanup@2026-11-24T03:00:00Z"
    assert split_task_id(identifier) == ("shop-ns", "daily-cleanup", "2026-11-24T03:00:00Z")
    assert task_id("n", "j", 1.5) == "n/j@1970-01-01T00:00:01.500Z"
    assert split_task_id("celery-uuid-1234") is None


# --- the beat's children -----------------------------------------------------------------------------

OWNER = ObjectIdentity(name="shop", namespace="prod", uid="11111111-2222-3333-4444-555555555555", generation=3)
TQ_SPEC = {"image": "ghcr.io/acme/shop:1.4.2", "app": "myproject", "queues": [{"name": "jobs"}],
           "env": [{"name": "DJANGO_SETTINGS_MODULE", "value": "myproject.settings"}],
           "serviceAccountName": "shop", "imagePullSecrets": [{"name": "regcred"}],
           "pod": {"nodeSelector": {"pool": "celery"}, "labels": {"team": "a"}},
           "beat": {"resources": {"requests": {"cpu": "50m"}}}}
IMAGE = "registry.example.com/celery-operator:9.9"
IMAGES = builders.DefaultImages(beat=IMAGE, redis="redis:7.4-alpine", flower="mher/flower:2.0")
STATE_PASSWORD = "st4te-pw-not-in-manifests"


def tq_spec(**changes: Any):
    spec = copy.deepcopy(TQ_SPEC)
    spec.update(changes)
    return parse_taskqueue_spec(spec)


def by_name(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


def test_the_operators_beat_deployment() -> None:
    spec = tq_spec(broker={"url": "redis://redis.shared:6379/0"})
    (beat,) = build_beat(OWNER, spec, BeatOptions(custom=False), IMAGES)
    assert (beat["kind"], beat["metadata"]["name"]) == ("Deployment", "shop-beat")
    labels = beat["metadata"]["labels"]
    assert labels == {"app.kubernetes.io/name": "celery", "app.kubernetes.io/instance": "shop",
                      "app.kubernetes.io/component": "beat", "app.kubernetes.io/managed-by": "celery-operator",
                      "celery-operator.dev/beat-role": "scheduler"}
    assert beat["metadata"]["ownerReferences"] == [OWNER.owner_reference()]
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}
    selector = beat["spec"]["selector"]["matchLabels"]
    pod = beat["spec"]["template"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert pod["metadata"]["labels"]["team"] == "a"
    pod_spec = pod["spec"]
    assert pod_spec["automountServiceAccountToken"] is False, "the beat needs no API access"
    assert not {"serviceAccountName", "serviceAccount", "imagePullSecrets"} & set(pod_spec)
    assert pod_spec["nodeSelector"] == {"pool": "celery"}
    assert pod_spec["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    (container,) = pod_spec["containers"]
    assert container["image"] == IMAGE
    assert container["command"] == ["python", "-m", "celery_operator.beat"]
    assert container["resources"] == {"requests": {"cpu": "50m"}}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "readOnlyRootFilesystem": True}
    env = {e["name"]: e for e in container["env"]}
    assert env["CELERY_BROKER_URL"]["valueFrom"] == {"secretKeyRef": {"name": "shop-broker", "key": "url"}}
    assert env["CELERY_OPERATOR_BEAT_STATE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "shop-broker",
                                                                                   "key": "url"}}
    assert env["CELERY_OPERATOR_BEAT_KEY_PREFIX"]["value"] == "celery-operator:beat:{prod/shop}:"
    assert "DJANGO_SETTINGS_MODULE" not in env, "the operator's beat runs no user code"
    assert "redis://" not in json.dumps(beat), "no URL in plain text"


def test_an_amqp_broker_gets_a_state_redis_with_its_own_selector() -> None:
    spec = tq_spec(broker={"urlSecretRef": {"name": "rabbit", "key": "url"}})
    manifests = by_name(build_beat(OWNER, spec, BeatOptions(custom=False, state="managed",
                                                            state_password=STATE_PASSWORD), IMAGES))
    assert set(manifests) == {("Secret", "shop-beat-state"), ("Deployment", "shop-beat-state"),
                              ("Service", "shop-beat-state"), ("Deployment", "shop-beat")}
    secret = manifests[("Secret", "shop-beat-state")]
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert values == {"password": STATE_PASSWORD,
                      "url": f"redis://:{STATE_PASSWORD}@shop-beat-state.prod.svc:6379/0"}
    state = manifests[("Deployment", "shop-beat-state")]
    assert state["spec"]["strategy"] == {"type": "Recreate"} and state["spec"]["replicas"] == 1
    assert "--appendonly" in state["spec"]["template"]["spec"]["containers"][0]["args"]
    beat = manifests[("Deployment", "shop-beat")]
    beat_selector = beat["spec"]["selector"]["matchLabels"]
    state_selector = state["spec"]["selector"]["matchLabels"]
    assert not beat_selector.items() <= state["spec"]["template"]["metadata"]["labels"].items(), \
        "the beat's selector must not match the state Redis pods"
    assert not state_selector.items() <= beat["spec"]["template"]["metadata"]["labels"].items()
    service = manifests[("Service", "shop-beat-state")]
    assert service["spec"]["selector"] == state_selector
    env = {e["name"]: e for e in beat["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CELERY_OPERATOR_BEAT_STATE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "shop-beat-state",
                                                                                  "key": "url"}
    everything_but_the_secret = json.dumps([m for k, m in manifests.items() if k[0] != "Secret"])
    assert STATE_PASSWORD not in everything_but_the_secret and "redis://" not in everything_but_the_secret
    with pytest.raises(ValueError):
        build_beat(OWNER, spec, BeatOptions(custom=False, state="managed"), IMAGES)


def test_a_custom_scheduler_runs_celery_beat_from_the_app_image() -> None:
    spec = tq_spec(beat={"scheduler": "django_celery_beat.schedulers:DatabaseScheduler"},
                   resultBackend={"url": "rpc://"})
    (beat,) = build_beat(OWNER, spec, BeatOptions(custom=True), IMAGES)
    pod_spec = beat["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    assert container["command"] == custom_beat_command("myproject", "django_celery_beat.schedulers:DatabaseScheduler")
    assert container["command"] == ["celery", "-A", "myproject", "beat", "-S",
                                    "django_celery_beat.schedulers:DatabaseScheduler"]
    assert container["image"] == "ghcr.io/acme/shop:1.4.2"
    env = {e["name"]: e for e in container["env"]}
    assert env["DJANGO_SETTINGS_MODULE"]["value"] == "myproject.settings", "the app's env, like workers"
    assert env["CELERY_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {"name": "shop-broker", "key": "url"}
    assert pod_spec["serviceAccountName"] == "shop"
    assert beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"] == {"type": "Recreate"}


def test_desired_children_include_the_beat_only_when_asked() -> None:
    spec = tq_spec(broker={"url": "redis://redis.shared:6379/0"})
    without = by_name(builders.desired_children(OWNER, spec, images=IMAGES))
    assert ("Deployment", "shop-beat") not in without
    with_beat = by_name(builders.desired_children(OWNER, spec, images=IMAGES, beat=BeatOptions(custom=False)))
    assert set(with_beat) - set(without) == {("Deployment", "shop-beat"), ("NetworkPolicy", "shop-beat")}


# --- status pieces --------------------------------------------------------------------------------

NOW = datetime.datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
IDENTITY = ObjectIdentity(name="shop", namespace="ns", uid="u1", generation=3)


def verdict(beat: Condition | None, blocked: reconcile.Blocked | None = None) -> reconcile.Verdict:
    broker = Condition.true("BrokerReady", "Fine", "ok")
    workers = Condition.true("WorkersReady", "Fine", "ok")
    return reconcile.Verdict(broker=None if blocked else broker, workers=None if blocked else workers, blocked=blocked,
                             queues=None if blocked else [{"name": "a", "replicas": 1, "readyReplicas": 1}],
                             beat=beat)


def kinds(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_beat_ready_is_part_of_ready_and_goes_when_no_periodicjob_refers() -> None:
    beat_running = Condition.true("BeatReady", "BeatRunning", "ok")
    running = reconcile.compose_status({"status": {}}, IDENTITY, verdict(beat_running), NOW)
    assert kinds(running) == {"BrokerReady": "True", "WorkersReady": "True", "BeatReady": "True", "Ready": "True"}
    beat_down = Condition.false("BeatReady", "BeatNotRunning", "no")
    down = reconcile.compose_status({"status": running}, IDENTITY, verdict(beat_down), NOW)
    assert kinds(down)["Ready"] == "False"
    assert conditions.get_condition(down["conditions"], "Ready")["reason"] == "BeatNotRunning"
    gone = reconcile.compose_status({"status": down}, IDENTITY, verdict(None), NOW)
    assert "BeatReady" not in kinds(gone) and kinds(gone)["Ready"] == "True"
    assert reconcile.STATUS.changed(down, gone)
    blocked = reconcile.compose_status({"status": down}, IDENTITY,
                                       verdict(None, reconcile.Blocked("NameConflict", "x")), NOW)
    assert kinds(blocked)["BeatReady"] == "False", "a blocked pass restates BeatReady"


def test_periodicjob_status_restates_times_it_cannot_read_and_writes_only_changes() -> None:
    body = {"metadata": {"name": "j", "generation": 2}, "status": {}}
    ok = periodicjobs.Outcome(Condition.true("Ready", "Scheduled", "sent"), known=True, last="2026-11-24T07:59:58Z",
                              next="2026-11-24T08:00:00Z")
    status = periodicjobs.compose_status(body, ok, NOW)
    assert status["observedGeneration"] == 2 and status["lastScheduleTime"] == "2026-11-24T07:59:58Z"
    assert conditions.get_condition(status["conditions"], "Ready")["observedGeneration"] == 2
    assert not periodicjobs.STATUS.changed(status, periodicjobs.compose_status({**body, "status": status}, ok, NOW))
    unknown = periodicjobs.Outcome(Condition.false("Ready", "BeatNotRunning", "unreachable"))
    restated = periodicjobs.compose_status({**body, "status": status}, unknown, NOW)
    assert (restated["lastScheduleTime"], restated["nextScheduleTime"]) == (ok.last, ok.next)
    suspended = periodicjobs.Outcome(Condition.true("Ready", "Suspended", "s"), known=True, last=ok.last, next=None)
    without_next = periodicjobs.compose_status({**body, "status": status}, suspended, NOW)
    assert "nextScheduleTime" not in without_next and periodicjobs.STATUS.changed(status, without_next)


def test_desired_jobs_keep_only_valid_periodicjobs() -> None:
    def body(name: str, **spec: Any) -> dict[str, Any]:
        merged = {**PJ_SPEC, **spec}
        return {"metadata": {"name": name, "uid": f"uid-{name}", "generation": 1},
                "spec": {k: v for k, v in merged.items() if v is not None}}

    jobs = desired_jobs([body("ok"), body("zone", interval=None, schedule="0 3 * * *",
                                                          timeZone="Nowhere/Land"),
                                      body("cron", interval=None, schedule="0 0 31 2 *")])
    assert list(jobs) == ["ok"] and jobs["ok"].uid == "uid-ok"


def test_beat_ready_follows_the_deployment_and_the_heartbeat() -> None:
    spec = tq_spec(broker={"url": "redis://redis.shared:6379/0"})
    jobs = {"a": DesiredJob("a", pj(), "uid-a", 1)}
    plan = reconcile.BeatPlan(options=BeatOptions(custom=False), jobs=jobs, referred=True,
                              location=StateLocation("redis://redis.shared:6379/0",
                                                     "celery-operator:beat:{prod/shop}:"))
    available = {"metadata": {"generation": 2}, "spec": {"replicas": 1},
                 "status": {"observedGeneration": 2, "updatedReplicas": 1, "availableReplicas": 1, "readyReplicas": 1}}
    children = Children({("apps/v1", "Deployment", "shop-beat"): available})
    alive = BeatState(jobs={}, fired={}, heartbeat={"instance": "shop-beat-7d9-x2v"})

    def condition(**changes: Any) -> tuple[str, str, str] | None:
        arguments = dict(plan=plan, children=children, state=alive, problem=None, spec=spec) | changes
        found = reconcile.beat_condition(OWNER, arguments["spec"], arguments["plan"], Children(arguments["children"]),
                                         arguments["state"], arguments["problem"])
        return None if found is None else (found.status, found.reason, found.message)

    assert condition() == ("True", "BeatRunning",
                           "shop-beat (shop-beat-7d9-x2v) sends the schedule of 1 PeriodicJob(s)")
    assert condition(plan=reconcile.BeatPlan(None, {}, False, None)) is None, "no PeriodicJob refers: no BeatReady"
    assert condition(children={})[:2] == ("False", "BeatNotAvailable")
    rolling = {**available, "status": {**available["status"], "availableReplicas": 0, "readyReplicas": 0}}
    assert condition(children={("apps/v1", "Deployment", "shop-beat"): rolling}) == (
        "False", "BeatNotAvailable", "waiting for shop-beat (0/1 ready)")
    assert condition(state=None, problem="broker redis://redis.shared:6379/0: refused") == (
        "False", "BeatStateUnreachable", "broker redis://redis.shared:6379/0: refused")
    assert condition(state=BeatState(jobs={}, fired={}, heartbeat=None))[:2] == ("False", "BeatNotRunning")
    custom = tq_spec(beat={"scheduler": "my.scheduler:S"})
    assert condition(spec=custom, state=None)[:2] == ("True", "CustomScheduler")
