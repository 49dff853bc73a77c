"""The scaler tick of one TaskQueue: read the broker (broker.py), decide (scaling.py), act (kube.py).

Every queue is measured (pending and in-flight show in the status of fixed queues too); only
autoscaled queues are scaled. `replicas` of an autoscaled worker Deployment is written through
the scale subresource under the scaler's own field manager, and only when it changes. Before a
scale-down, idle pods get a lower `controller.kubernetes.io/pod-deletion-cost` than busy ones,
so the ReplicaSet controller removes idle workers first. No kopf imports here.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import builders, conditions, metrics, naming, scaling
from .broker import BrokerUnavailable, QueueDepth, worker_hostname, busy_workers
from .kube import Manifest
from .models import ObjectIdentity, QueueSpec, SpecError, TaskQueueSpec
from .runtime import BrokerHandles, Runtime

logger = logging.getLogger(__name__)

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
# Busy pods are expensive to delete, idle ones cheap: the ReplicaSet controller removes the
# lowest cost first. Busy pods rank by how many tasks they run.
BUSY_POD_COST = 1000
IDLE_POD_COST = -1000
INSPECT_TIMEOUT_SECONDS = 1.0
WAKE_GAP_SECONDS = 0.25
UNSETTLED_RETRY_SECONDS = 1.0  # between ticks while a TaskQueue is not yet reconciled or its broker never answered
SCALER_STATUS_QUEUE_FIELDS = ("name", "pending", "inFlight", "desiredReplicas", "lastScaleTime")


@dataclass(frozen=True)
class WorkerPod:
    name: str
    annotations: Mapping[str, str]


PodsOfQueue = Callable[[str], Sequence[WorkerPod]]  # queue DNS name -> its live (not terminating) worker pods


@dataclass(frozen=True)
class QueueOutcome:
    """One queue after a tick: what the status shows."""

    name: str
    pending: int
    in_flight: int
    desired: int
    last_scale_time: str | None
    idle_at_zero: bool = False  # autoscaled and scaled to zero: its first message should wake the scaler

    def status(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "pending": self.pending, "inFlight": self.in_flight,
                                 "desiredReplicas": self.desired}
        if self.last_scale_time is not None:
            entry["lastScaleTime"] = self.last_scale_time
        return entry


async def sleep_until_next_tick(stopped: Any, woken: asyncio.Event, seconds: float, ticked_at: float) -> None:
    """Sleep `seconds`, or less: until the daemon is stopped or a queue at zero gets a message. A
    wake-up comes no sooner than WAKE_GAP_SECONDS after the last tick began (loop.time()), so a flood
    of messages on a queue that cannot scale costs a few ticks a second, not one per message."""
    loop = asyncio.get_running_loop()
    waits = {asyncio.ensure_future(woken.wait()), asyncio.ensure_future(stopped.wait(seconds))}
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
    if woken.is_set() and not stopped:
        await asyncio.sleep(max(0.0, ticked_at + WAKE_GAP_SECONDS - loop.time()))


def poll_interval(body: Mapping[str, Any]) -> float:
    """The TaskQueue's pollIntervalSeconds (2 s when the spec cannot be read)."""
    try:
        return float(TaskQueueSpec.parse(body.get("spec")).autoscaling.poll_interval_seconds)
    except SpecError:
        return 2.0


def next_tick_in(body: Mapping[str, Any], settled: bool) -> float:
    interval = poll_interval(body)
    return interval if settled else min(interval, UNSETTLED_RETRY_SECONDS)


def _broker_url(identity: ObjectIdentity, children: Mapping[tuple[str, str, str], Manifest]) -> str | None:
    secret = children.get(("v1", "Secret", naming.broker_name(identity.name)))
    if secret is None:
        return None
    return builders.decode_secret_value(secret, naming.BROKER_SECRET_URL_KEY)


def _now_text() -> str:
    return conditions.format_time(datetime.datetime.now(datetime.timezone.utc))


def _observe(handles: BrokerHandles, queue: QueueSpec, depth: QueueDepth | None, pods: Sequence[WorkerPod],
             unreadable: str | None) -> scaling.Observation | scaling.Unknown:
    if depth is None:
        return scaling.Unknown(unreadable or "broker unreadable")
    if not pods:  # no worker can hold a task: nothing to ask the heartbeats
        return scaling.Observation(pending=depth.pending, in_flight=depth.reserved, busy_workers=0)
    try:
        activity = handles.monitor.activity(queue.name, pods={pod.name for pod in pods})
    except BrokerUnavailable as error:
        return scaling.Unknown(str(error))
    return scaling.Observation(pending=depth.pending, in_flight=depth.reserved + activity.in_flight,
                               busy_workers=len(activity.busy_pods))


def _protect_busy_pods(runtime: Runtime, identity: ObjectIdentity, url: str, queue: QueueSpec,
                       pods: Sequence[WorkerPod], known_busy: frozenset[str]) -> None:
    """Ask the queue's workers which are busy (right now, only them), and price their pods accordingly."""
    names = {worker_hostname(queue.name, pod.name): pod.name for pod in pods}
    try:
        busy_names = busy_workers(url, list(names), timeout=INSPECT_TIMEOUT_SECONDS)
        busy = {names[name] for name in busy_names if name in names} | set(known_busy)
    except BrokerUnavailable as error:
        logger.warning("cannot ask %s's workers which are busy, keeping them all: %s", queue.name, error)
        busy = {pod.name for pod in pods}
    for pod in pods:
        cost = str(BUSY_POD_COST if pod.name in busy else IDLE_POD_COST)
        if pod.annotations.get(DELETION_COST) != cost:
            runtime.kube.patch_metadata("v1", "Pod", identity.namespace, pod.name, {DELETION_COST: cost})


def _scale(runtime: Runtime, body: Mapping[str, Any], identity: ObjectIdentity, url: str, queue: QueueSpec,
           decision: scaling.Decision, pods: Sequence[WorkerPod], handles: BrokerHandles) -> None:
    deployment = naming.worker_name(identity.name, queue.name)
    if decision.direction == "down" and pods:
        known_busy: frozenset[str] = frozenset()
        try:
            known_busy = frozenset(handles.monitor.busy_pods(queue.name, pods={p.name for p in pods}))
        except BrokerUnavailable:
            pass
        _protect_busy_pods(runtime, identity, url, queue, pods, known_busy)
    runtime.kube.scale(identity.namespace, deployment, decision.replicas, runtime.settings.scaler_field_manager)
    reason = "ScaledUp" if decision.direction == "up" else "ScaledDown"
    message = f"{deployment}: {decision.current} → {decision.replicas} replicas ({decision.reason})"
    logger.info("%s/%s %s", identity.namespace, identity.name, message)
    runtime.kube.post_event(body, "Normal", reason, message)
    metrics.SCALE_EVENTS.labels(identity.namespace, identity.name, queue.name, decision.direction).inc()


def _tick_queue(runtime: Runtime, body: Mapping[str, Any], identity: ObjectIdentity, spec: TaskQueueSpec,
                queue: QueueSpec, url: str, handles: BrokerHandles, depth: QueueDepth | None,
                unreadable: str | None, deployment: Manifest | None, pods: Sequence[WorkerPod]) -> QueueOutcome:
    memory = runtime.queue_memory(identity.uid, queue.name)
    current = int((deployment or {}).get("spec", {}).get("replicas", 0))
    observation = _observe(handles, queue, depth, pods, unreadable)
    pending = observation.pending if isinstance(observation, scaling.Observation) else 0
    in_flight = observation.in_flight if isinstance(observation, scaling.Observation) else 0
    desired = current if queue.autoscaling is None else None
    replicas = current
    if queue.autoscaling is not None and deployment is not None:
        policy = scaling.ScalingPolicy.from_spec(queue.autoscaling, spec.autoscaling)
        decision = scaling.decide(observation, policy, memory.history, current, time.monotonic())
        memory.history = decision.history
        desired = decision.desired if decision.desired is not None else current
        if decision.changed:
            _scale(runtime, body, identity, url, queue, decision, pods, handles)
            memory.last_scale_time = _now_text()
            replicas = decision.replicas
    previous = _previous_queue_status(body, queue.name)
    if isinstance(observation, scaling.Unknown):  # show the last figures known, not zeros
        pending, in_flight = int(previous.get("pending", 0)), int(previous.get("inFlight", 0))
    metrics.record_queue(identity, queue.name, pending, in_flight, desired or 0, current)
    return QueueOutcome(name=queue.name, pending=pending, in_flight=in_flight, desired=desired or 0,
                        last_scale_time=memory.last_scale_time or previous.get("lastScaleTime"),
                        idle_at_zero=queue.autoscaling is not None and deployment is not None and replicas == 0)


def _previous_queue_status(body: Mapping[str, Any], queue: str) -> Mapping[str, Any]:
    for entry in (body.get("status") or {}).get("queues") or []:
        if entry.get("name") == queue:
            return entry
    return {}


def _read_depths(handles: BrokerHandles, spec: TaskQueueSpec) -> tuple[dict[str, QueueDepth] | None, str | None]:
    try:
        return handles.reader.read([queue.name for queue in spec.queues]), None
    except BrokerUnavailable as error:
        return None, str(error)


def compose_scaler_status(body: Mapping[str, Any], identity: ObjectIdentity, spec: TaskQueueSpec,
                          outcomes: Sequence[QueueOutcome], unreadable: str | None,
                          ever_read: bool = True) -> dict[str, Any]:
    """The status fields the scaler owns: per-queue figures, the pending total, the Autoscaling condition."""
    status: dict[str, Any] = {"queues": [o.status() for o in outcomes],
                              "pending": sum(o.pending for o in outcomes)}
    previous = [c for c in (body.get("status") or {}).get("conditions") or []
                if c.get("type") == conditions.AUTOSCALING]
    if spec.autoscaled_queues:
        if unreadable is None:
            triple = ("True", "QueueDepthRead", f"queue depth read every {spec.autoscaling.poll_interval_seconds}s")
        elif not ever_read:  # a broker still starting (say, the managed Redis) is no outage
            triple = ("Unknown", "WaitingForBroker", f"the broker has not answered yet: {unreadable}")
        else:
            triple = ("False", "BrokerUnavailable", f"replicas held where they are: {unreadable}")
        status["conditions"] = conditions.set_condition(
            previous, type=conditions.AUTOSCALING, status=triple[0], reason=triple[1], message=triple[2],
            observed_generation=identity.generation, now=datetime.datetime.now(datetime.timezone.utc))
    else:
        status["conditions"] = []
    return status


def scaler_status_changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    old_queues = [{k: q[k] for k in SCALER_STATUS_QUEUE_FIELDS if k in q} for q in old.get("queues") or []]
    old_conditions = [c for c in old.get("conditions") or [] if c.get("type") == conditions.AUTOSCALING]
    return (old_queues != new["queues"] or old.get("pending") != new["pending"]
            or conditions.conditions_differ(old_conditions, new["conditions"]))


def _autoscaling_event(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """An Event when the broker stops or starts answering the scaler."""
    before = conditions.get_condition(old.get("conditions"), conditions.AUTOSCALING)
    after = conditions.get_condition(new["conditions"], conditions.AUTOSCALING)
    if after is None or (before or {}).get("status") == after["status"] or after["status"] == "Unknown":
        return None
    if after["status"] == "True":
        return ("Normal", "BrokerAvailable", "scaling resumed: " + after["message"]) if (
            before or {}).get("status") == "False" else None
    return "Warning", after["reason"], after["message"]


def tick(runtime: Runtime, body: Mapping[str, Any], children: Sequence[Manifest], pods_of: PodsOfQueue) -> bool:
    """One scaler pass over a TaskQueue; writes only what changed. False while there is not yet all
    there is to measure (not reconciled, broker never read): the caller then comes back soon rather
    than after pollIntervalSeconds."""
    identity = ObjectIdentity.from_body(body)
    try:
        spec = TaskQueueSpec.parse(body.get("spec"))
    except SpecError:
        return True  # the reconciler reports it; nothing to hurry for
    by_key = {builders.child_key(item): item for item in children}
    url = _broker_url(identity, by_key)
    if url is None:
        return False  # not reconciled yet
    started = time.perf_counter()
    handles = runtime.brokers.acquire(identity.uid, url)
    depths, unreadable = _read_depths(handles, spec)
    if unreadable is not None:
        metrics.BROKER_ERRORS.labels(identity.namespace, identity.name).inc()
    else:
        runtime.mark_broker_read(identity.uid)
    outcomes = []
    every_deployment = True  # of the autoscaled queues: a queue at zero is only watched once it has one
    for queue in spec.queues:
        deployment = by_key.get(("apps/v1", "Deployment", naming.worker_name(identity.name, queue.name)))
        every_deployment = every_deployment and (deployment is not None or queue.autoscaling is None)
        depth = None if depths is None else depths.get(queue.name)
        outcomes.append(_tick_queue(runtime, body, identity, spec, queue, url, handles, depth, unreadable,
                                    deployment, pods_of(queue.dns_name)))
    if handles.arrivals is not None:
        handles.arrivals.watch(identity.uid, [outcome.name for outcome in outcomes if outcome.idle_at_zero])
    status = compose_scaler_status(body, identity, spec, outcomes, unreadable, runtime.broker_ever_read(identity.uid))
    old_status = body.get("status") or {}
    if scaler_status_changed(old_status, status):
        runtime.kube.publish_status(body, status, runtime.settings.scaler_field_manager,
                                    _autoscaling_event(old_status, status))
    metrics.TICK_SECONDS.observe(time.perf_counter() - started)
    return every_deployment and runtime.broker_ever_read(identity.uid)
