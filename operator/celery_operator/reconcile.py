"""Reconcile one TaskQueue: observe -> build -> apply what differs -> status. No kopf imports.

Reads come from what the handlers observed (kopf indexes of our children, kept current by
watches) and, only where that cannot answer, from the API: an object of a child's name that is
not in the index may be somebody else's. Writes happen only when something differs (drift.py), so
a settled TaskQueue costs no request but the broker check. Pods are read only while a child
Deployment has not rolled out, to say why (podfailures.py). All I/O goes through the Runtime's ports.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from . import builders, drift, metrics, naming, pause
from .beat import state as beat_state
from .beat.jobs import DesiredJob, desired_jobs, plan_sync
from .beat.state import BeatState, StateLocation
from .brokerrestarts import BrokerRestart, restart_cause, restarted
from .broker.probe import ProbeResult
from .broker.urls import BrokerUnavailable, is_redis_url, redact
from .children import ChildKey, Children, Manifest, Rollout, child_key, controller_uid, decode_secret_value
from .conditions import Condition
from .kube import KubeError, unless_namespace_terminating
from .models import ObjectIdentity, SpecError, TaskQueueSpec, validate_taskqueue_name
from .podfailures import PodFailure, deployment_failure, unbound_claim
from .reasons import PROGRESS, BeatReady, BrokerAcceptingWrites, BrokerReady, EventReason, Paused, Ready, WorkersReady
from .runtime import Runtime
from .settings import Settings
from .status import HeadlineEvents, StatusPart, publish

logger = logging.getLogger(__name__)

PASSWORD_BYTES: Final = 24
STATUS: Final = StatusPart(
    conditions=frozenset({Ready.TYPE, BrokerReady.TYPE, BrokerAcceptingWrites.TYPE, WorkersReady.TYPE,
                          BeatReady.TYPE, Paused.TYPE}),
    fields=frozenset({"observedGeneration", "brokerSecretName", "queueCount", "workers", "broker",
                      "operatorVersion"}),
    queue_fields=("name", "replicas", "readyReplicas"),
)
EVENTS: Final = HeadlineEvents(Ready.TYPE, progress=PROGRESS)


class Blocked(Exception):
    """Something a user must fix (or wait for) before the children can be touched."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.condition = Condition.false(Ready.TYPE, reason, message)


# --- what exists --------------------------------------------------------------------------------

@dataclass(frozen=True)
class BrokerAccess:
    """The broker URL, and what the Secret builder needs from it."""

    url: str
    password: str | None = None  # managed: generated once, then read back from `<tq>-broker`
    external_url: str | None = None  # urlSecretRef: the value read from the user's Secret

    def __repr__(self) -> str:
        return f"BrokerAccess(url={redact(self.url)!r})"


def _read_user_secret_url(runtime: Runtime, identity: ObjectIdentity, spec: TaskQueueSpec) -> str:
    reference = spec.broker.url_secret_ref
    assert reference is not None
    field_path = "spec.broker.urlSecretRef"
    secret = runtime.kube.get("v1", "Secret", identity.namespace, reference.name)
    if secret is None:
        raise Blocked(Ready.BROKER_SECRET_NOT_FOUND,
                      f"{field_path}.name: Secret {reference.name!r} does not exist in namespace {identity.namespace}")
    value = decode_secret_value(secret, reference.key)
    if not value:
        raise Blocked(Ready.BROKER_SECRET_KEY_NOT_FOUND,
                      f"{field_path}.key: Secret {reference.name!r} has no key {reference.key!r}")
    return value.strip()


def _password_of(secret: Manifest | None) -> str:
    """The password a Secret of ours holds, or a new one: generated once, never rotated silently."""
    existing = decode_secret_value(secret, naming.BROKER_SECRET_PASSWORD_KEY) if secret is not None else None
    return existing or secrets.token_urlsafe(PASSWORD_BYTES)


def broker_access(runtime: Runtime, identity: ObjectIdentity, spec: TaskQueueSpec,
                  children: Children) -> BrokerAccess:
    if spec.broker.kind == "managed":
        password = _password_of(children.secret(naming.broker_name(identity.name)))
        return BrokerAccess(url=builders.broker_url(identity, spec.broker, password=password), password=password)
    if spec.broker.kind == "url":
        return BrokerAccess(url=builders.broker_url(identity, spec.broker))
    external = _read_user_secret_url(runtime, identity, spec)
    return BrokerAccess(url=external, external_url=external)


def flower_password(runtime: Runtime, identity: ObjectIdentity, spec: TaskQueueSpec, children: Children) -> str | None:
    """The password of Flower's generated login, when it has one (kept in `<tq>-flower`)."""
    if not spec.flower.generated_password:
        return None
    name = naming.flower_name(identity.name)
    return _password_of(with_own_secret(runtime, identity, children, name).secret(name))


def operator_source(settings: Settings) -> builders.OperatorSource:
    return builders.OperatorSource(namespace=settings.pod_namespace, pod_labels=settings.pod_label_map(),
                                   cidrs=settings.source_cidr_list())


def _not_ours(names: Iterable[str]) -> Blocked:
    return Blocked(Ready.NAME_CONFLICT, f"{', '.join(names)} already exist(s) and not owned by this TaskQueue; "
                                        "rename or delete them (the TaskQueue never adopts objects it did not create)")


def with_own_secret(runtime: Runtime, identity: ObjectIdentity, children: Children, name: str) -> Children:
    """A Secret of ours holding a generated password: look it up before building anything from it."""
    secret = children.secret(name) or runtime.kube.get("v1", "Secret", identity.namespace, name)
    if secret is None:
        return children
    if controller_uid(secret) != identity.uid:
        raise _not_ours([f"Secret {name}"])
    return children.with_child(secret)


def _describe(key: ChildKey) -> str:
    return f"{key[1]} {key[2]}"


def resolve_live_children(runtime: Runtime, identity: ObjectIdentity, desired: Iterable[Manifest],
                          observed: Children) -> dict[ChildKey, Manifest | None]:
    """The live object of every desired child; one not in the index is looked up, and refused if not ours."""
    live: dict[ChildKey, Manifest | None] = {}
    conflicts = []
    for manifest in desired:
        key = child_key(manifest)
        found = observed.get(key) or runtime.kube.get(key[0], key[1], identity.namespace, key[2])
        if found is not None and controller_uid(found) != identity.uid:
            conflicts.append(_describe(key))
            continue
        live[key] = found
    if conflicts:
        raise _not_ours(conflicts)
    return live


# --- writes -------------------------------------------------------------------------------------

def _scaler_owns_replicas(live: Manifest, scaler_manager: str) -> bool:
    for entry in live.get("metadata", {}).get("managedFields") or []:
        if entry.get("manager") == scaler_manager and "f:replicas" in (entry.get("fieldsV1") or {}).get("f:spec", {}):
            return True
    return False


def _hand_replicas_to_scaler(runtime: Runtime, identity: ObjectIdentity, manifest: Manifest,
                             current: Manifest | None, min_replicas: int) -> Manifest | None:
    """An autoscaled worker Deployment starts at minReplicas, with `replicas` owned by the scaler.

    Without this, a Deployment created without replicas would start one pod, and one that was a
    fixed queue would fall back to the default when the reconciler stops applying the field.
    """
    kube, settings = runtime.kube, runtime.settings
    replicas = min_replicas if current is None else int(current.get("spec", {}).get("replicas", min_replicas))
    if current is None:
        kube.apply({**manifest, "spec": {**manifest["spec"], "replicas": replicas}}, settings.field_manager)
    kube.scale(identity.namespace, manifest["metadata"]["name"], replicas, settings.scaler_field_manager)
    return kube.get("apps/v1", "Deployment", identity.namespace, manifest["metadata"]["name"])


def apply_children(runtime: Runtime, identity: ObjectIdentity, spec: TaskQueueSpec, desired: Sequence[Manifest],
                   live: Mapping[ChildKey, Manifest | None]) -> Children:
    """Apply each child that differs from its live object; return the live objects after the writes."""
    autoscaled = {naming.worker_name(identity.name, q.name): q.autoscaling.min_replicas
                  for q in spec.queues if q.autoscaling is not None}
    result: dict[ChildKey, Manifest] = {}
    for manifest in map(drift.stamped, desired):
        key = child_key(manifest)
        current = live.get(key)
        if key[1] == "Deployment" and key[2] in autoscaled and (
                current is None or not _scaler_owns_replicas(current, runtime.settings.scaler_field_manager)):
            current = _hand_replicas_to_scaler(runtime, identity, manifest, current, autoscaled[key[2]])
        if current is not None and not drift.needs_apply(manifest, current):
            result[key] = current
            continue
        logger.info("applying %s in %s", _describe(key), identity.namespace)
        result[key] = runtime.kube.apply(manifest, runtime.settings.field_manager)
    return Children(result)


def delete_unwanted(runtime: Runtime, identity: ObjectIdentity, desired: Iterable[Manifest],
                    observed: Children) -> list[str]:
    """Delete owned children no longer desired: a removed queue, Flower turned off, the beat once no
    PeriodicJob refers to the TaskQueue (with its state Redis, for an AMQP broker).

    A broker's volume claim is kept when persistence is turned off: it holds data, and goes with
    the TaskQueue (garbage collection) or by hand.
    """
    wanted = {child_key(m) for m in desired}
    deleted = []
    for key, item in observed.items():
        if key in wanted or key[1] == "PersistentVolumeClaim" or controller_uid(item) != identity.uid:
            continue
        if runtime.kube.delete(key[0], key[1], identity.namespace, key[2], uid=item["metadata"].get("uid")):
            deleted.append(_describe(key))
    return deleted


def pod_failures(runtime: Runtime, identity: ObjectIdentity, children: Children) -> dict[str, PodFailure]:
    """Why the pods of each child Deployment that has not rolled out cannot run, by Deployment name.
    One pod listing, and only while some Deployment is not settled."""
    unsettled = [item for key, item in children.items() if key[1] == "Deployment" and not Rollout.of(item).settled]
    if not unsettled:
        return {}
    try:
        pods = runtime.kube.list_pods(identity.namespace, naming.owned_children_selector(identity.name))
    except KubeError as error:  # a status without the kubelet's reasons beats no status
        logger.warning("cannot read the pods of TaskQueue %s/%s: %s", identity.namespace, identity.name, error)
        return {}
    failures = {item["metadata"]["name"]: deployment_failure(item, pods) for item in unsettled}
    return {name: failure for name, failure in failures.items() if failure is not None}


def broker_claim_problem(runtime: Runtime, identity: ObjectIdentity, children: Children) -> str | None:
    """Why the managed broker's volume claim does not bind, while its Deployment has not rolled out
    and the claim is Pending; reads the claim's Events only then."""
    name = naming.broker_name(identity.name)
    claim = children.claim(name)
    if claim is None or Rollout.of(children.deployment(name)).settled or (claim.get("status") or {}).get(
            "phase", "Pending") != "Pending":
        return None
    try:
        events = runtime.kube.list_events(identity.namespace, "PersistentVolumeClaim", name)
    except KubeError as error:
        logger.warning("cannot read the Events of claim %s/%s: %s", identity.namespace, name, error)
        return None
    return unbound_claim(claim, events)


# --- conditions -----------------------------------------------------------------------------------

def queue_statuses(identity: ObjectIdentity, spec: TaskQueueSpec, children: Children) -> list[dict[str, Any]]:
    """Per queue, what the reconciler owns: replicas and readyReplicas of its Deployment."""
    entries = []
    for queue in spec.queues:
        deployment = children.deployment(naming.worker_name(identity.name, queue.name)) or {}
        entries.append({"name": queue.name, "replicas": int(deployment.get("spec", {}).get("replicas", 0)),
                        "readyReplicas": int(deployment.get("status", {}).get("readyReplicas", 0))})
    return entries


def workers_condition(identity: ObjectIdentity, spec: TaskQueueSpec, children: Children,
                      failures: Mapping[str, PodFailure]) -> Condition:
    waiting, failing = [], []
    for queue in spec.queues:
        name = naming.worker_name(identity.name, queue.name)
        deployment = children.deployment(name)
        rollout = Rollout.of(deployment)
        if deployment is None:
            waiting.append(f"{name} (not created)")
        elif name in failures:
            failing.append(failures[name].describe())
        elif not rollout.serving:
            waiting.append(f"{name} ({rollout.describe()})")
    if failing:
        rest = f"; waiting for {', '.join(waiting)}" if waiting else ""
        return Condition.false(WorkersReady.TYPE, WorkersReady.POD_FAILING, "; ".join(failing) + rest)
    if waiting:
        return Condition.false(WorkersReady.TYPE, WorkersReady.NOT_READY, "waiting for " + ", ".join(waiting))
    return Condition.true(WorkersReady.TYPE, WorkersReady.AVAILABLE,
                          f"all {len(spec.queues)} worker Deployment(s) have their replicas available")


def broker_condition(runtime: Runtime, identity: ObjectIdentity, spec: TaskQueueSpec, access: BrokerAccess,
                     children: Children, failures: Mapping[str, PodFailure],
                     now: float, claim_problem: str | None = None) -> tuple[Condition, ProbeResult | None]:
    """BrokerReady, and what the probe found (None: the broker was not probed, its pod is not up)."""
    starting = None  # the managed Redis' Deployment, while its silence may still be its start
    if spec.broker.kind == "managed":
        name = naming.broker_name(identity.name)
        rollout = Rollout.of(children.deployment(name))
        if name in failures:
            return Condition.false(BrokerReady.TYPE, BrokerReady.POD_FAILING, failures[name].describe()), None
        if claim_problem is not None:
            return Condition.false(BrokerReady.TYPE, BrokerReady.VOLUME_PENDING,
                                   f"the managed Redis cannot start: {claim_problem}; see "
                                   "spec.broker.managed.persistence"), None
        if not rollout.settled:  # still starting: a progress report, not an outage
            return Condition.false(BrokerReady.TYPE, BrokerReady.STARTING,
                                   f"waiting for the managed Redis (Deployment {name}: {rollout.describe()})"), None
        if _just_available(rollout, now):
            starting = name
    result = runtime.brokers.probe(access.url)
    if result.problem is None:
        return Condition.true(BrokerReady.TYPE, BrokerReady.REACHABLE, "the broker answers"), result
    if starting is not None:
        return Condition.false(BrokerReady.TYPE, BrokerReady.STARTING,
                               f"the managed Redis is available (Deployment {starting}) and does not answer yet: "
                               f"{result.problem}"), result
    return Condition.false(BrokerReady.TYPE, BrokerReady.UNREACHABLE, result.problem), result


def broker_record(runtime: Runtime, identity: ObjectIdentity, spec: TaskQueueSpec, access: BrokerAccess,
                  probed: ProbeResult | None, recorded: Mapping[str, Any] | None,
                  now: float) -> tuple[Mapping[str, Any] | None, BrokerRestart | None]:
    """status.broker after this pass, and the restart of the broker it saw, with its cause and what
    the queues hold now. `recorded`: status.broker as this writer last left it (kept while the broker
    does not say which run it is; a body read before that write would hold an older one)."""
    instance = probed.instance if probed is not None else None
    if instance is None:
        return recorded, None
    record = {**(recorded or {}), "runId": instance.run_id}
    if not restarted((recorded or {}).get("runId"), instance):
        return record, None
    try:
        messages: int | None = runtime.brokers.count_messages(access.url, [queue.name for queue in spec.queues])
    except BrokerUnavailable as error:
        logger.warning("cannot count the messages of TaskQueue %s/%s after its broker restarted: %s",
                       identity.namespace, identity.name, error)
        messages = None
    restart = BrokerRestart.of(_restart_cause(runtime, identity, spec, instance.uptime_seconds), instance, messages,
                               datetime.datetime.fromtimestamp(now, datetime.timezone.utc),
                               without_persistence(spec))
    record["lastRestart"] = restart.status()
    return record, restart


def _restart_cause(runtime: Runtime, identity: ObjectIdentity, spec: TaskQueueSpec, uptime_seconds: int) -> str:
    if spec.broker.kind != "managed":
        return f"the Redis server restarted ({uptime_seconds} s ago)"
    selector = f"{naming.owned_children_selector(identity.name)},{naming.LABEL_COMPONENT}={naming.BROKER}"
    try:
        return restart_cause(runtime.kube.list_pods(identity.namespace, selector))
    except KubeError as error:
        logger.warning("cannot read the broker pods of TaskQueue %s/%s: %s", identity.namespace, identity.name, error)
        return "the broker restarted"


def without_persistence(spec: TaskQueueSpec) -> str:
    """Why a broker keeps no append-only file, in the words of the spec."""
    if spec.broker.kind == "managed":
        return "spec.broker.managed.persistence.enabled is false"
    return "the Redis server runs with appendonly no"


# A Service reaches the nodes' proxies and the cluster DNS a moment after its pod became Ready
# (EndpointSlice, then each kube-proxy's sync): a broker silent for that long is still starting.
BROKER_ANSWER_GRACE_SECONDS = 30


def _just_available(rollout: Rollout, now: float) -> bool:
    return rollout.available_since is not None and now - rollout.available_since < BROKER_ANSWER_GRACE_SECONDS


def _bytes(amount: int) -> str:
    return f"{amount} bytes ({amount / 1048576:.1f}Mi)"


def writes_condition(result: ProbeResult | None, broker_url: str) -> tuple[Condition | None, bool]:
    """BrokerAcceptingWrites from the probe, and whether to keep the condition as it was (the broker's
    memory unknown now). None without keeping: not a Redis broker with a maxmemory, so no condition.

    The messages name maxmemory, not the memory in use, so a settled status does not change each pass.
    """
    if result is None or result.problem is not None or (result.memory is None and is_redis_url(broker_url)):
        return None, True
    memory = result.memory
    if memory is None or not memory.limited:
        return None, False
    limit = f"its maxmemory of {_bytes(memory.max)}, maxmemory-policy {memory.policy}"
    if not memory.full:
        return Condition.true(BrokerAcceptingWrites.TYPE, BrokerAcceptingWrites.BELOW_MAX_MEMORY,
                              f"Redis is below {limit}"), False
    if memory.policy == "noeviction":
        effect = ("it refuses new messages (producers get OOM errors) and keeps the ones it holds until "
                  "workers drain the queues")
    else:
        effect = "it evicts keys to make room: queued messages may be lost"
    return Condition.false(BrokerAcceptingWrites.TYPE, BrokerAcceptingWrites.FULL,
                           f"Redis is at {limit}: {effect}; give it more room with "
                           "spec.broker.managed.resources.limits.memory (or maxMemory)"), False


def flower_condition(identity: ObjectIdentity, spec: TaskQueueSpec,
                     failures: Mapping[str, PodFailure]) -> Condition | None:
    """Flower has no condition of its own: a Flower that cannot run makes Ready False."""
    failure = failures.get(naming.flower_name(identity.name)) if spec.flower.enabled else None
    return Condition.false(Ready.TYPE, Ready.FLOWER_POD_FAILING, failure.describe()) if failure else None


@dataclass(frozen=True)
class Verdict:
    """The conditions this reconcile sets, and the status fields that go with them."""

    broker: Condition | None
    workers: Condition | None
    blocked: Blocked | None
    queues: list[dict[str, Any]] | None = None
    beat: Condition | None = None  # BeatReady; None on an unblocked pass = no PeriodicJob refers
    flower: Condition | None = None  # only when Flower's pods cannot run
    writes: Condition | None = None  # BrokerAcceptingWrites; None = none, or as it was when keep_writes
    keep_writes: bool = False
    broker_record: Mapping[str, Any] | None = None  # status.broker; None = as it was
    restart: BrokerRestart | None = None  # a restart of the broker this pass saw

    @classmethod
    def of_blocked(cls, blocked: Blocked) -> Verdict:
        return cls(broker=None, workers=None, blocked=blocked)


def ready_condition(verdict: Verdict) -> Condition:
    if verdict.blocked is not None:
        return verdict.blocked.condition
    for condition in (verdict.broker, verdict.writes, verdict.workers, verdict.beat, verdict.flower):
        if condition is not None and not condition.is_true:
            return Condition.false(Ready.TYPE, condition.reason, condition.message)
    if verdict.beat is not None:
        return Condition.true(Ready.TYPE, Ready.READY,
                              "the broker answers, every queue's workers are available and the beat runs")
    return Condition.true(Ready.TYPE, Ready.READY, "the broker answers and every queue's workers are available")


def compose_status(body: Mapping[str, Any], identity: ObjectIdentity, verdict: Verdict,
                   now: datetime.datetime) -> dict[str, Any]:
    """The status fields the reconciler owns (applied under its field manager; the scaler owns the rest).

    A blocked pass sets Ready only and restates what it owned before, so nothing it cannot see now is lost.
    """
    previous = body.get("status") or {}
    updates = [c for c in (verdict.broker, verdict.writes, verdict.workers, verdict.beat) if c is not None]
    fields: dict[str, Any] = {"observedGeneration": identity.generation,
                              "brokerSecretName": naming.broker_name(identity.name),
                              "broker": verdict.broker_record or previous.get("broker"),
                              "operatorVersion": naming.OPERATOR_VERSION}
    if verdict.queues is None:
        fields.update({key: previous.get(key) for key in ("queueCount", "workers")})
        queues = STATUS.owned_queues(previous) or None
    else:
        ready = sum(q["readyReplicas"] for q in verdict.queues)
        desired = sum(q["replicas"] for q in verdict.queues)
        fields.update(queueCount=len(verdict.queues), workers=f"{ready}/{desired}")
        queues = verdict.queues
    drop = [BeatReady.TYPE] if verdict.blocked is None and verdict.beat is None else []
    if verdict.blocked is None and verdict.writes is None and not verdict.keep_writes:
        drop.append(BrokerAcceptingWrites.TYPE)
    paused = pause.paused_condition(body)  # here only ever False: an annotation the operator does not understand
    if paused is None:
        drop.append(Paused.TYPE)
    else:
        updates.append(paused)
    return STATUS.compose(previous, [*updates, ready_condition(verdict)], generation=identity.generation, now=now,
                          drop=drop, fields=fields, queues=queues)


def compose_paused_status(body: Mapping[str, Any], identity: ObjectIdentity, previous: Mapping[str, Any],
                          now: datetime.datetime) -> dict[str, Any]:
    """A paused TaskQueue's status: as the reconciler last left it (observedGeneration too: a spec
    changed meanwhile is not acted on), with the Paused condition."""
    paused = pause.paused_condition(body)
    assert paused is not None
    return STATUS.compose(previous, [paused], generation=identity.generation, now=now,
                          fields={key: previous.get(key) for key in STATUS.fields},
                          queues=STATUS.owned_queues(previous) or None)


# --- the beat -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BeatPlan:
    """What the TaskQueue's beat should be, from its spec and the PeriodicJobs referring to it.

    options: the beat children to build (None: no beat). jobs: what the operator's beat should
    carry ({} with a custom scheduler or no PeriodicJob). referred: PeriodicJobs refer to the
    TaskQueue (BeatReady is reported). location: where the schedule state lives, when it can be
    synced now (the broker when it is Redis; the `<tq>-beat-state` Redis while it is wanted).
    """

    options: builders.BeatOptions | None
    jobs: dict[str, DesiredJob]
    referred: bool
    location: StateLocation | None


def plan_beat(runtime: Runtime, identity: ObjectIdentity, spec: TaskQueueSpec, access: BrokerAccess,
              referring: Sequence[Mapping[str, Any]], children: Children) -> BeatPlan:
    referred = bool(referring)
    custom = spec.beat.custom_scheduler
    own = referred and not custom
    options, state_url = None, None
    if own and not beat_state.lives_on_broker(access.url):
        name = naming.beat_state_name(identity.name)
        password = _password_of(with_own_secret(runtime, identity, children, name).secret(name))
        options = builders.BeatOptions(custom=False, state="managed", state_password=password)
        state_url = builders.beat_state_url(identity, password)
    elif own or custom:
        options = builders.BeatOptions(custom=custom, state="broker")
    return BeatPlan(options=options, jobs=desired_jobs(referring) if own else {}, referred=referred,
                    location=beat_state.locate(identity.namespace, identity.name, access.url, state_url))


def sync_beat_jobs(runtime: Runtime, identity: ObjectIdentity, plan: BeatPlan, now: float) -> BeatState:
    """Make the `jobs` hash hold exactly the valid PeriodicJobs: one read, writes only what differs.
    Raises BrokerUnavailable."""
    assert plan.location is not None
    state = runtime.beat_state.read(plan.location)
    changes = plan_sync(state.jobs, plan.jobs, task_queue_uid=identity.uid, now=now)
    if not changes.empty:
        skipped = runtime.beat_state.write_jobs(plan.location, changes.upserts, changes.removals)
        written = sorted(set(changes.upserts) - set(skipped))
        removed = sorted(set(changes.removals) - set(skipped))
        logger.info("TaskQueue %s/%s: beat schedule synced (written: %s; removed: %s%s)", identity.namespace,
                    identity.name, ", ".join(written) or "none", ", ".join(removed) or "none",
                    f"; changed meanwhile, next pass: {', '.join(skipped)}" if skipped else "")
    return state


def beat_condition(identity: ObjectIdentity, spec: TaskQueueSpec, plan: BeatPlan, children: Children,
                   state: BeatState | None, state_problem: str | None,
                   failures: Mapping[str, PodFailure] | None = None) -> Condition | None:
    """BeatReady: only while PeriodicJobs refer to the TaskQueue."""
    if not plan.referred:
        return None
    name = naming.beat_name(identity.name)
    for deployment in (name, naming.beat_state_name(identity.name)):
        if deployment in (failures or {}):
            return Condition.false(BeatReady.TYPE, BeatReady.POD_FAILING, (failures or {})[deployment].describe())
    deployment = children.deployment(name)
    if deployment is None:
        return Condition.false(BeatReady.TYPE, BeatReady.NOT_AVAILABLE, f"waiting for {name} (not created)")
    rollout = Rollout.of(deployment)
    if not rollout.settled:
        return Condition.false(BeatReady.TYPE, BeatReady.NOT_AVAILABLE, f"waiting for {name} ({rollout.describe()})")
    if spec.beat.custom_scheduler:
        return Condition.true(BeatReady.TYPE, BeatReady.CUSTOM_SCHEDULER,
                              f"{name} runs spec.beat.scheduler ({spec.beat.scheduler}); "
                              "PeriodicJobs are not sent by it")
    if state is None:
        return Condition.false(BeatReady.TYPE, BeatReady.STATE_UNREACHABLE,
                               state_problem or "the beat's schedule state cannot be read")
    if state.heartbeat is None:
        return Condition.false(BeatReady.TYPE, BeatReady.NOT_RUNNING,
                               f"{name} has not reported (its heartbeat expired or never came)")
    leader = state.heartbeat.get("instance")
    return Condition.true(BeatReady.TYPE, BeatReady.RUNNING, f"{name}{f' ({leader})' if leader else ''} sends the "
                                                             f"schedule of {len(plan.jobs)} PeriodicJob(s)")


def _beat_state(runtime: Runtime, identity: ObjectIdentity, plan: BeatPlan, broker: Condition, broker_url: str,
                children: Children, now: float) -> tuple[BeatState | None, str | None]:
    """The beat's state after syncing its jobs, or why it could not be read. Synced while a beat is
    wanted, and once more after it went, to take the jobs out."""
    if plan.location is None or (plan.options is None and not children.of_component(naming.BEAT)):
        return None, None
    if plan.location.url == broker_url and not broker.is_true:
        return None, f"the beat's schedule lives on the broker: {broker.message}"
    try:
        return sync_beat_jobs(runtime, identity, plan, now), None
    except BrokerUnavailable as error:
        return None, str(error)


# --- the whole pass -------------------------------------------------------------------------------

def converge(runtime: Runtime, body: Mapping[str, Any], observed: Children,
             referring: Sequence[Mapping[str, Any]] = (), now: float | None = None,
             recorded_broker: Mapping[str, Any] | None = None) -> Verdict:
    identity = ObjectIdentity.from_body(body)
    try:
        validate_taskqueue_name(identity.name)
        spec = TaskQueueSpec.parse(body.get("spec"))
    except SpecError as error:
        return Verdict.of_blocked(Blocked(Ready.INVALID_SPEC, str(error)))
    settings = runtime.settings
    images = builders.DefaultImages(beat=settings.beat_image, redis=settings.redis_image, flower=settings.flower_image)
    try:
        observed = with_own_secret(runtime, identity, observed, naming.broker_name(identity.name))
        access = broker_access(runtime, identity, spec, observed)
        beat = plan_beat(runtime, identity, spec, access, referring, observed)
        desired = builders.desired_children(identity, spec, images=images, broker_password=access.password,
                                            external_broker_url=access.external_url, beat=beat.options,
                                            flower_password=flower_password(runtime, identity, spec, observed),
                                            operator_source=operator_source(settings),
                                            broker_claim=observed.claim(naming.broker_name(identity.name)))
        live = resolve_live_children(runtime, identity, desired, observed)
        children = apply_children(runtime, identity, spec, desired, live)
        for name in delete_unwanted(runtime, identity, desired, observed):
            logger.info("deleted %s in %s: no longer in the spec", name, identity.namespace)
    except Blocked as blocked:
        return Verdict.of_blocked(blocked)
    failures = pod_failures(runtime, identity, children)
    moment = time.time() if now is None else now
    broker, probed = broker_condition(runtime, identity, spec, access, children, failures, moment,
                                      broker_claim_problem(runtime, identity, children))
    writes, keep_writes = writes_condition(probed, access.url)
    record, restart = broker_record(runtime, identity, spec, access, probed, recorded_broker, moment)
    state, problem = _beat_state(runtime, identity, beat, broker, access.url, observed, moment)
    return Verdict(
        broker=broker,
        workers=workers_condition(identity, spec, children, failures),
        blocked=None,
        queues=queue_statuses(identity, spec, children),
        beat=beat_condition(identity, spec, beat, children, state, problem, failures),
        flower=flower_condition(identity, spec, failures),
        writes=writes,
        keep_writes=keep_writes,
        broker_record=record,
        restart=restart,
    )


def record_beat_up(identity: ObjectIdentity, verdict: Verdict) -> None:
    """celery_operator_beat_up follows BeatReady: 1 True, 0 False, no series while no PeriodicJob
    refers; a blocked pass restates BeatReady, so it leaves the series as it was too."""
    if verdict.blocked is not None:
        return
    if verdict.beat is None:
        with contextlib.suppress(KeyError):  # older prometheus_client releases raise for an absent series
            metrics.BEAT_UP.remove(identity.namespace, identity.name)
        return
    metrics.BEAT_UP.labels(identity.namespace, identity.name).set(1 if verdict.beat.is_true else 0)


def report_broker_restart(runtime: Runtime, body: Mapping[str, Any], restart: BrokerRestart) -> None:
    identity = ObjectIdentity.from_body(body)
    message = restart.message()
    logger.warning("TaskQueue %s/%s: %s", identity.namespace, identity.name, message)
    runtime.kube.post_event(body, restart.event_type, EventReason.BROKER_RESTARTED, message)


def reconcile_taskqueue(runtime: Runtime, body: Mapping[str, Any], observed: Iterable[Manifest],
                        referring: Iterable[Mapping[str, Any]] = (), now: datetime.datetime | None = None) -> None:
    """One level-triggered pass over a TaskQueue. Errors a retry can fix propagate (kopf retries).

    `referring`: the PeriodicJobs whose spec.taskQueueRef names this TaskQueue.
    """
    identity = ObjectIdentity.from_body(body)
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    going_away = unless_namespace_terminating(identity.namespace, f"TaskQueue {identity.name}")
    with runtime.exclusively(identity.uid) as present, going_away:
        if not present:
            return  # deleted while this pass waited: its children go with it, its schedule state is gone
        # the cache may still hold a PeriodicJob whose delete handler has run: it must not come back
        jobs = [job for job in referring if not runtime.deleted(job.get("metadata", {}).get("uid", ""))]
        seen = runtime.status_writes.live(identity.uid, runtime.settings.field_manager, STATUS,
                                          body.get("status") or {})
        restart = None
        if pause.is_paused(body):
            status = compose_paused_status(body, identity, seen, moment)
        else:
            verdict = converge(runtime, body, Children(observed), jobs, moment.timestamp(), seen.get("broker"))
            record_beat_up(identity, verdict)
            status, restart = compose_status(body, identity, verdict, moment), verdict.restart
        # the Events of what this write records, once each: a pass on a stale body finds nothing to write
        if publish(runtime.kube, body, STATUS, status, runtime.settings.field_manager, EVENTS, runtime.status_writes):
            if (paused := pause.pause_event(seen, status)) is not None:
                runtime.kube.post_event(body, paused.type, paused.reason, paused.message)
            if restart is not None:
                report_broker_restart(runtime, body, restart)
