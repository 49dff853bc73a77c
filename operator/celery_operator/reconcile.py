"""Reconcile one TaskQueue: observe -> build -> apply what differs -> status.

Reads come from what the handlers observed (kopf indexes of our children, kept current by
watches) and, only where that cannot answer, from the API: an object of a child's name that is
not in the index may be somebody else's. Writes happen only when something differs, so a settled
TaskQueue costs no request but the broker check. No kopf imports here.
"""

from __future__ import annotations

import datetime
import logging
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import builders, conditions, drift, naming, periodicjobs
from .beat.jobs import DesiredJob, plan_sync
from .broker import BeatState, BrokerUnavailable, is_redis_url, read_beat_state, write_beat_jobs
from .builders import ChildKey, child_key
from .kube import Kube, KubeError, Manifest, controller_uid
from .models import ObjectIdentity, SpecError, TaskQueueSpec, validate_taskqueue_name
from .runtime import Runtime
from .settings import OperatorSettings

logger = logging.getLogger(__name__)

PASSWORD_BYTES = 24


class Blocked(Exception):
    """Something a user must fix (or wait for) before the children can be touched."""

    def __init__(self, reason: str, message: str, condition: str = conditions.READY):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.condition = condition


# --- the steps -------------------------------------------------------------------------------

@dataclass(frozen=True)
class BrokerAccess:
    url: str
    password: str | None = None
    external_url: str | None = None


def _read_user_secret_url(kube: Kube, identity: ObjectIdentity, spec: TaskQueueSpec) -> str:
    reference = spec.broker.url_secret_ref
    assert reference is not None
    field_path = "spec.broker.urlSecretRef"
    secret = kube.get("v1", "Secret", identity.namespace, reference.name)
    if secret is None:
        raise Blocked("BrokerSecretNotFound",
                      f"{field_path}.name: Secret {reference.name!r} does not exist in namespace {identity.namespace}")
    value = builders.decode_secret_value(secret, reference.key)
    if not value:
        raise Blocked("BrokerSecretKeyNotFound",
                      f"{field_path}.key: Secret {reference.name!r} has no key {reference.key!r}")
    return value.strip()


def _existing_password(live_secret: Manifest | None) -> str | None:
    if live_secret is None:
        return None
    return builders.decode_secret_value(live_secret, naming.BROKER_SECRET_PASSWORD_KEY)


def broker_access(kube: Kube, identity: ObjectIdentity, spec: TaskQueueSpec,
                  live_secret: Manifest | None) -> BrokerAccess:
    """The broker URL, and what the Secret builder needs: the managed password is generated once."""
    if spec.broker.kind == "managed":
        password = _existing_password(live_secret) or secrets.token_urlsafe(PASSWORD_BYTES)
        url = builders.broker_url(identity, spec.broker, password=password)
        return BrokerAccess(url=url, password=password)
    if spec.broker.kind == "url":
        return BrokerAccess(url=builders.broker_url(identity, spec.broker))
    external = _read_user_secret_url(kube, identity, spec)
    return BrokerAccess(url=external, external_url=external)


def _with_live_secret(kube: Kube, identity: ObjectIdentity, observed: Mapping[ChildKey, Manifest],
                      name: str) -> dict[ChildKey, Manifest]:
    """A Secret of ours holding a generated password: look it up before building anything from it."""
    key = ("v1", "Secret", name)
    result = dict(observed)
    secret = result.get(key) or kube.get("v1", "Secret", identity.namespace, key[2])
    if secret is not None and controller_uid(secret) != identity.uid:
        raise Blocked("NameConflict", f"Secret {key[2]} already exists and is not owned by this TaskQueue; "
                                      "rename or delete it (the TaskQueue never adopts objects it did not create)")
    if secret is not None:
        result[key] = secret
    return result


def _describe(key: ChildKey) -> str:
    return f"{key[1]} {key[2]}"


def resolve_live_children(kube: Kube, identity: ObjectIdentity, desired: Iterable[Manifest],
                          observed: Mapping[ChildKey, Manifest]) -> dict[ChildKey, Manifest | None]:
    """The live object of every desired child; one not in the index is looked up, and refused if not ours."""
    live: dict[ChildKey, Manifest | None] = {}
    conflicts = []
    for manifest in desired:
        key = child_key(manifest)
        found = observed.get(key)
        if found is None:
            found = kube.get(key[0], key[1], identity.namespace, key[2])
        if found is not None and controller_uid(found) != identity.uid:
            conflicts.append(_describe(key))
            continue
        live[key] = found
    if conflicts:
        raise Blocked("NameConflict",
                      f"{', '.join(conflicts)} already exist(s) and not owned by this TaskQueue; "
                      "rename or delete them (the TaskQueue never adopts objects it did not create)")
    return live


def _scaler_owns_replicas(live: Manifest, scaler_manager: str) -> bool:
    for entry in live.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == scaler_manager and "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {}):
            return True
    return False


def _autoscaled_deployment_names(identity: ObjectIdentity, spec: TaskQueueSpec) -> dict[str, int]:
    return {naming.worker_name(identity.name, q.name): q.autoscaling.min_replicas
            for q in spec.queues if q.autoscaling is not None}


def apply_children(runtime: Runtime, identity: ObjectIdentity, spec: TaskQueueSpec, desired: Sequence[Manifest],
                   live: Mapping[ChildKey, Manifest | None]) -> dict[ChildKey, Manifest]:
    """Apply each child that differs from its live object; return the live objects after the writes."""
    kube, settings = runtime.kube, runtime.settings
    autoscaled = _autoscaled_deployment_names(identity, spec)
    result: dict[ChildKey, Manifest] = {}
    for manifest in map(drift.stamped, desired):
        key = child_key(manifest)
        current = live.get(key)
        name = key[2]
        if key[1] == "Deployment" and name in autoscaled and (
                current is None or not _scaler_owns_replicas(current, settings.scaler_field_manager)):
            current = _hand_replicas_to_scaler(kube, identity, manifest, current, autoscaled[name], settings)
        if not drift.needs_apply(manifest, current):
            result[key] = current
            continue
        logger.info("applying %s in %s", _describe(key), identity.namespace)
        result[key] = kube.apply(manifest, settings.field_manager)
    return result


def _hand_replicas_to_scaler(kube: Kube, identity: ObjectIdentity, manifest: Manifest, current: Manifest | None,
                             min_replicas: int, settings: OperatorSettings) -> Manifest:
    """An autoscaled worker Deployment starts at minReplicas, with `replicas` owned by the scaler.

    Without this, a Deployment created without replicas would start one pod, and one that was a
    fixed queue would fall back to the default when the reconciler stops applying the field.
    """
    replicas = min_replicas if current is None else int(current.get("spec", {}).get("replicas", min_replicas))
    if current is None:
        seeded = {**manifest, "spec": {**manifest["spec"], "replicas": replicas}}
        kube.apply(seeded, settings.field_manager)
    kube.scale(identity.namespace, manifest["metadata"]["name"], replicas, settings.scaler_field_manager)
    return kube.get("apps/v1", "Deployment", identity.namespace, manifest["metadata"]["name"])


def delete_unwanted(kube: Kube, identity: ObjectIdentity, desired: Iterable[Manifest],
                    observed: Mapping[ChildKey, Manifest]) -> list[str]:
    """Delete owned children no longer desired: a removed queue, Flower turned off, the beat once no
    PeriodicJob refers to the TaskQueue (with its state Redis, for an AMQP broker).

    A broker's volume claim is kept when persistence is turned off: it holds data, and goes with
    the TaskQueue (garbage collection) or by hand.
    """
    wanted = {child_key(m) for m in desired}
    deleted = []
    for key, item in observed.items():
        if key in wanted or key[1] == "PersistentVolumeClaim":
            continue
        if controller_uid(item) != identity.uid:
            continue
        if kube.delete(key[0], key[1], identity.namespace, key[2], uid=item["metadata"].get("uid")):
            deleted.append(_describe(key))
    return deleted


# --- status ----------------------------------------------------------------------------------

def _deployment_ready(deployment: Manifest) -> tuple[int, int, bool]:
    """(desired replicas, ready replicas, rolled out and available)."""
    spec, status = deployment.get("spec", {}), deployment.get("status", {})
    desired = int(spec.get("replicas", 1))
    ready = int(status.get("readyReplicas", 0))
    settled = (status.get("observedGeneration", 0) >= deployment.get("metadata", {}).get("generation", 0)
               and int(status.get("updatedReplicas", 0)) >= desired
               and int(status.get("availableReplicas", 0)) >= desired)
    return desired, ready, settled


def queue_statuses(identity: ObjectIdentity, spec: TaskQueueSpec,
                   children: Mapping[ChildKey, Manifest]) -> list[dict[str, Any]]:
    """Per queue, what the reconciler owns: replicas and readyReplicas of its Deployment."""
    entries = []
    for queue in spec.queues:
        deployment = children.get(("apps/v1", "Deployment", naming.worker_name(identity.name, queue.name)), {})
        entries.append({"name": queue.name, "replicas": int(deployment.get("spec", {}).get("replicas", 0)),
                        "readyReplicas": int(deployment.get("status", {}).get("readyReplicas", 0))})
    return entries


def workers_condition(identity: ObjectIdentity, spec: TaskQueueSpec,
                      children: Mapping[ChildKey, Manifest]) -> tuple[str, str, str]:
    waiting = []
    for queue in spec.queues:
        name = naming.worker_name(identity.name, queue.name)
        deployment = children.get(("apps/v1", "Deployment", name))
        if deployment is None:
            waiting.append(f"{name} (not created)")
            continue
        desired, ready, settled = _deployment_ready(deployment)
        if not settled:
            waiting.append(f"{name} ({ready}/{desired} ready)")
    if waiting:
        return "False", "WorkersNotReady", "waiting for " + ", ".join(waiting)
    return "True", "WorkersAvailable", f"all {len(spec.queues)} worker Deployment(s) have their replicas available"


def broker_condition(runtime: Runtime, identity: ObjectIdentity, spec: TaskQueueSpec, access: BrokerAccess,
                     children: Mapping[ChildKey, Manifest]) -> tuple[str, str, str]:
    if spec.broker.kind == "managed":
        name = naming.broker_name(identity.name)
        desired, ready, settled = _deployment_ready(children.get(("apps/v1", "Deployment", name), {}))
        if not settled:  # still starting: a progress report, not an outage
            return "False", "BrokerStarting", f"waiting for the managed Redis (Deployment {name}: {ready}/{desired} ready)"
    problem = runtime.probe_broker(access.url, runtime.settings.broker_timeout_seconds)
    if problem is None:
        return "True", "BrokerReachable", "the broker answers"
    return "False", "BrokerUnreachable", problem


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class Verdict:
    """The conditions this reconcile sets, and the status fields that go with them."""

    broker: tuple[str, str, str] | None
    workers: tuple[str, str, str] | None
    blocked: Blocked | None
    queues: list[dict[str, Any]] | None = None
    beat: tuple[str, str, str] | None = None  # BeatReady; None on an unblocked pass = no PeriodicJob refers


def _ready_from(verdict: Verdict) -> tuple[str, str, str]:
    if verdict.blocked is not None:
        return "False", verdict.blocked.reason, verdict.blocked.message
    for triple in (verdict.broker, verdict.workers, verdict.beat):
        if triple is not None and triple[0] != "True":
            return "False", triple[1], triple[2]
    if verdict.beat is not None:
        return "True", "Ready", "the broker answers, every queue's workers are available and the beat runs"
    return "True", "Ready", "the broker answers and every queue's workers are available"


RECONCILER_CONDITIONS = (conditions.BROKER_READY, conditions.WORKERS_READY, conditions.BEAT_READY, conditions.READY)
QUEUE_FIELDS = ("name", "replicas", "readyReplicas")


def _own_queue_fields(entries: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{key: entry[key] for key in QUEUE_FIELDS if key in entry} for entry in entries]


def _own_conditions(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(c) for c in status.get("conditions") or [] if c.get("type") in RECONCILER_CONDITIONS]


def compose_status(body: Mapping[str, Any], identity: ObjectIdentity, verdict: Verdict,
                   now: datetime.datetime) -> dict[str, Any]:
    """The status fields the reconciler owns (applied under its field manager; the scaler owns the rest).

    A blocked pass sets Ready only and restates what it owned before, so nothing it cannot see now is lost.
    """
    previous = body.get("status") or {}
    current = _own_conditions(previous)
    if verdict.blocked is None and verdict.beat is None:
        current = conditions.remove_condition(current, conditions.BEAT_READY)
    for kind, triple in ((conditions.BROKER_READY, verdict.broker), (conditions.WORKERS_READY, verdict.workers),
                         (conditions.BEAT_READY, verdict.beat), (conditions.READY, _ready_from(verdict))):
        if triple is None:
            continue
        status, reason, message = triple
        current = conditions.set_condition(current, type=kind, status=status, reason=reason, message=message,
                                           observed_generation=identity.generation, now=now)
    composed: dict[str, Any] = {"conditions": current, "observedGeneration": identity.generation,
                                "brokerSecretName": naming.broker_name(identity.name)}
    if verdict.queues is None:
        composed.update({key: previous[key] for key in ("queueCount", "workers") if key in previous})
        if previous.get("queues"):
            composed["queues"] = _own_queue_fields(previous["queues"])
        return composed
    ready = sum(q["readyReplicas"] for q in verdict.queues)
    desired = sum(q["replicas"] for q in verdict.queues)
    composed.update(queues=verdict.queues, queueCount=len(verdict.queues), workers=f"{ready}/{desired}")
    return composed


def status_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether the live status differs from the reconciler's part `new` (other writers' fields ignored)."""
    if conditions.conditions_differ(_own_conditions(old), new.get("conditions")):
        return True
    if _own_queue_fields(old.get("queues") or []) != new.get("queues", _own_queue_fields(old.get("queues") or [])):
        return True
    return any(old.get(key) != value for key, value in new.items() if key not in ("conditions", "queues"))


# Ready=False while things start: worth an Event, not a Warning
PROGRESS_REASONS = frozenset({"BrokerStarting", "WorkersNotReady", "BeatNotAvailable"})


def _event_for(old_status: Mapping[str, Any], new_status: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """One Event when Ready flips or its reason changes: (type, reason, message)."""
    before = conditions.get_condition(old_status.get("conditions"), conditions.READY) or {}
    after = conditions.get_condition(new_status.get("conditions"), conditions.READY) or {}
    if (before.get("status"), before.get("reason")) == (after.get("status"), after.get("reason")):
        return None
    if after.get("status") == "True":
        return "Normal", "Ready", after.get("message", "")
    reason = after.get("reason", "NotReady")
    return ("Normal" if reason in PROGRESS_REASONS else "Warning"), reason, after.get("message", "")


def report(runtime: Runtime, body: Mapping[str, Any], identity: ObjectIdentity, verdict: Verdict,
           now: datetime.datetime) -> None:
    old_status = body.get("status") or {}
    new_status = compose_status(body, identity, verdict, now)
    if not status_changed(old_status, new_status):
        return
    runtime.kube.publish_status(body, new_status, runtime.settings.field_manager, _event_for(old_status, new_status))


# --- the beat ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BeatPlan:
    """What the TaskQueue's beat should be, from its spec and the PeriodicJobs referring to it.

    options: the beat children to build (None: no beat). jobs: what the operator's beat should
    carry ({} with a custom scheduler or no PeriodicJob). referred: PeriodicJobs refer to the
    TaskQueue (BeatReady is reported). state_url: where the schedule state lives, when it can be
    synced now (the broker when it is Redis; the `<tq>-beat-state` Redis while it is wanted).
    """

    options: builders.BeatOptions | None
    jobs: dict[str, DesiredJob]
    referred: bool
    state_url: str | None


def plan_beat(runtime: Runtime, identity: ObjectIdentity, spec: TaskQueueSpec, access: BrokerAccess,
              referring: Sequence[Mapping[str, Any]], observed: Mapping[ChildKey, Manifest]) -> BeatPlan:
    referred = bool(referring)
    custom = spec.beat.custom_scheduler
    own = referred and not custom
    redis_broker = is_redis_url(access.url)
    jobs = periodicjobs.desired_jobs(referring) if own else {}
    state_url = access.url if redis_broker else None
    options = None
    if own and not redis_broker:
        name = naming.beat_state_name(identity.name)
        live = _with_live_secret(runtime.kube, identity, observed, name).get(("v1", "Secret", name))
        password = _existing_password(live) or secrets.token_urlsafe(PASSWORD_BYTES)
        options = builders.BeatOptions(custom=False, image=runtime.settings.beat_image, state="managed",
                                       state_password=password)
        state_url = builders.beat_state_url(identity, password)
    elif own or custom:
        options = builders.BeatOptions(custom=custom, image=runtime.settings.beat_image, state="broker")
    return BeatPlan(options=options, jobs=jobs, referred=referred, state_url=state_url)


def _has_beat_children(observed: Mapping[ChildKey, Manifest]) -> bool:
    return any((item.get("metadata", {}).get("labels") or {}).get(naming.LABEL_COMPONENT) == naming.BEAT
               for item in observed.values())


def sync_beat_jobs(runtime: Runtime, identity: ObjectIdentity, plan: BeatPlan, now: float) -> BeatState:
    """Make the `jobs` hash hold exactly the valid PeriodicJobs: one read, writes only what differs.
    Raises BrokerUnavailable."""
    assert plan.state_url is not None
    prefix = naming.beat_key_prefix(identity.namespace, identity.name)
    timeout = runtime.settings.broker_timeout_seconds
    state = read_beat_state(plan.state_url, prefix, timeout=timeout)
    changes = plan_sync(state.jobs, plan.jobs, task_queue_uid=identity.uid, now=now)
    if not changes.empty:
        skipped = write_beat_jobs(plan.state_url, prefix, changes.upserts, changes.removals, timeout=timeout)
        written = sorted(set(changes.upserts) - set(skipped))
        removed = sorted(set(changes.removals) - set(skipped))
        logger.info("TaskQueue %s/%s: beat schedule synced (written: %s; removed: %s%s)", identity.namespace,
                    identity.name, ", ".join(written) or "none", ", ".join(removed) or "none",
                    f"; changed meanwhile, next pass: {', '.join(skipped)}" if skipped else "")
    return state


def beat_condition(identity: ObjectIdentity, spec: TaskQueueSpec, plan: BeatPlan,
                   children: Mapping[ChildKey, Manifest], state: BeatState | None,
                   state_problem: str | None) -> tuple[str, str, str] | None:
    """BeatReady: only while PeriodicJobs refer to the TaskQueue."""
    if not plan.referred:
        return None
    name = naming.beat_name(identity.name)
    deployment = children.get(("apps/v1", "Deployment", name))
    if deployment is None:
        return "False", "BeatNotAvailable", f"waiting for {name} (not created)"
    desired, ready, settled = _deployment_ready(deployment)
    if not settled:
        return "False", "BeatNotAvailable", f"waiting for {name} ({ready}/{desired} ready)"
    if spec.beat.custom_scheduler:
        return ("True", "CustomScheduler",
                f"{name} runs spec.beat.scheduler ({spec.beat.scheduler}); PeriodicJobs are not sent by it")
    if state is None:
        return "False", "BeatStateUnreachable", state_problem or "the beat's schedule state cannot be read"
    if state.heartbeat is None:
        return "False", "BeatNotRunning", f"{name} has not reported (its heartbeat expired or never came)"
    leader = state.heartbeat.get("instance")
    return "True", "BeatRunning", (f"{name}{f' ({leader})' if leader else ''} sends the schedule of "
                                   f"{len(plan.jobs)} PeriodicJob(s)")


# --- the whole pass --------------------------------------------------------------------------

def converge(runtime: Runtime, body: Mapping[str, Any], observed: Mapping[ChildKey, Manifest],
             referring: Sequence[Mapping[str, Any]] = (), now: float | None = None) -> Verdict:
    identity = ObjectIdentity.from_body(body)
    try:
        validate_taskqueue_name(identity.name)
        spec = TaskQueueSpec.parse(body.get("spec"))
    except SpecError as error:
        return Verdict(broker=None, workers=None, blocked=Blocked("InvalidSpec", str(error)))
    try:
        observed = _with_live_secret(runtime.kube, identity, observed, naming.broker_name(identity.name))
        access = broker_access(runtime.kube, identity, spec,
                               observed.get(("v1", "Secret", naming.broker_name(identity.name))))
        beat = plan_beat(runtime, identity, spec, access, referring, observed)
        desired = builders.desired_children(identity, spec, broker_password=access.password,
                                            external_broker_url=access.external_url, beat=beat.options)
        live = resolve_live_children(runtime.kube, identity, desired, observed)
        children = apply_children(runtime, identity, spec, desired, live)
        for name in delete_unwanted(runtime.kube, identity, desired, observed):
            logger.info("deleted %s in %s: no longer in the spec", name, identity.namespace)
    except Blocked as blocked:
        return Verdict(broker=None, workers=None, blocked=blocked)
    broker = broker_condition(runtime, identity, spec, access, children)
    state, problem = None, None
    if beat.state_url is not None and (beat.options is not None or _has_beat_children(observed)):
        if beat.state_url == access.url and broker[0] != "True":
            problem = f"the beat's schedule lives on the broker: {broker[2]}"
        else:
            try:
                state = sync_beat_jobs(runtime, identity, beat, time.time() if now is None else now)
            except BrokerUnavailable as error:
                problem = str(error)
    return Verdict(
        broker=broker,
        workers=workers_condition(identity, spec, children),
        blocked=None,
        queues=queue_statuses(identity, spec, children),
        beat=beat_condition(identity, spec, beat, children, state, problem),
    )


def reconcile_taskqueue(runtime: Runtime, body: Mapping[str, Any], observed: Iterable[Manifest],
                        referring: Iterable[Mapping[str, Any]] = (), now: datetime.datetime | None = None) -> None:
    """One level-triggered pass over a TaskQueue. Errors a retry can fix propagate (kopf retries).

    `referring`: the PeriodicJobs whose spec.taskQueueRef names this TaskQueue.
    """
    identity = ObjectIdentity.from_body(body)
    observed_by_key = {child_key(item): item for item in observed}
    moment = now or _now()
    with runtime.lock_for(identity.uid):
        verdict = converge(runtime, body, observed_by_key, list(referring), moment.timestamp())
        report(runtime, body, identity, verdict, moment)


__all__ = ["Blocked", "Runtime", "reconcile_taskqueue", "KubeError"]
