"""The scaler's I/O tick over one TaskQueue: read the broker (its port), decide (scaling_policy.py,
pure), act (the Kubernetes port). No kopf imports.

Every queue is measured (pending and in-flight show in the status of fixed queues too); only
autoscaled queues are scaled. `replicas` of an autoscaled worker Deployment is written through
the scale subresource under the scaler's own field manager, and only when it changes. Before a
scale-down, idle pods get a lower `controller.kubernetes.io/pod-deletion-cost` than busy ones,
so the ReplicaSet controller removes idle workers first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from . import metrics, naming, pause, scaling_policy, workerhealth
from .broker.depth import QueueDepth
from .broker.heartbeats import WorkerState
from .broker.urls import BrokerUnavailable
from .broker.workers import worker_hostname
from .children import Children, Manifest
from .conditions import Condition, format_time
from .kube import KubeError
from .models import ObjectIdentity, QueueSpec, SpecError, TaskQueueSpec
from .ports import BrokerSession
from .reasons import Autoscaling, EventReason
from .runtime import QueueMemory, Runtime
from .status import Event, StatusPart, publish, transition
from .workerhealth import WorkerPod

logger = logging.getLogger(__name__)

DELETION_COST: Final = "controller.kubernetes.io/pod-deletion-cost"
# Busy pods are expensive to delete, idle ones cheap: the ReplicaSet controller removes the
# lowest cost first.
BUSY_POD_COST: Final = 1000
IDLE_POD_COST: Final = -1000
INSPECT_TIMEOUT_SECONDS: Final = 1.0
WAKE_GAP_SECONDS: Final = 0.25
# between ticks while a TaskQueue is not yet reconciled or its broker never answered
UNSETTLED_RETRY_SECONDS: Final = 1.0
STATUS: Final = StatusPart(conditions=frozenset({Autoscaling.TYPE}), fields=frozenset({"pending"}),
                           queue_fields=("name", "pending", "inFlight", "desiredReplicas", "lastScaleTime",
                                         "restarts", "lastRestart"))


PodsOfQueue = Callable[[str], Sequence[WorkerPod]]  # queue DNS name -> its live (not terminating) worker pods


@dataclass(frozen=True)
class QueueOutcome:
    """One queue after a tick: what the status shows."""

    name: str
    pending: int
    in_flight: int
    desired: int
    last_scale_time: str | None
    wake_at_growth: int | None = None  # the backlog growth that wakes the scaler before its next poll
    measured: bool = True  # False: pending or in flight could not be read on this tick
    restarts: int = 0  # the current worker pods' container restarts, summed
    last_restart: Mapping[str, Any] | None = None

    def status(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"name": self.name, "pending": self.pending, "inFlight": self.in_flight,
                                 "desiredReplicas": self.desired, "restarts": self.restarts}
        if self.last_scale_time is not None:
            entry["lastScaleTime"] = self.last_scale_time
        if self.last_restart is not None:
            entry["lastRestart"] = dict(self.last_restart)
        return entry


# --- the daemon's pace ----------------------------------------------------------------------------

def transient_failure(error: Exception) -> str | None:
    """A one-line account of a tick that failed for a reason the next tick retries by itself (the
    API server unreachable or refusing a request), or None for anything else: a bug, worth its
    traceback."""
    return str(error) if isinstance(error, KubeError) else None


class TickFailures:
    """How a daemon's failed ticks are logged: a bug with its traceback every time; a failure the
    next tick retries by itself in one line, once per distinct error (not every tick of an outage)."""

    def __init__(self) -> None:
        self._last: str | None = None

    def succeeded(self) -> None:
        self._last = None

    def failed(self, error: Exception, log: logging.Logger) -> None:
        transient = transient_failure(error)
        if transient is None:
            log.error("scaler tick failed", exc_info=error)
        elif transient != self._last:
            log.warning("scaler tick failed, retried every tick: %s", transient)
        self._last = transient


async def sleep_until_next_tick(stopped: Any, woken: asyncio.Event, seconds: float, ticked_at: float) -> None:
    """Sleep `seconds`, or less: until the daemon is stopped or a queue's backlog outgrows its workers
    (broker/arrivals.py). A wake-up comes no sooner than WAKE_GAP_SECONDS after the last tick began
    (loop.time()), so a backlog growing faster than the scaler can follow costs a few ticks a second,
    not one per message."""
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


# --- one tick -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tick:
    """What one tick knows of its TaskQueue before it looks at each queue."""

    runtime: Runtime
    body: Mapping[str, Any]
    identity: ObjectIdentity
    spec: TaskQueueSpec
    session: BrokerSession
    depths: dict[str, QueueDepth] | None  # None: the broker could not be read
    unreadable: str | None  # why not

    def previous_queue_status(self, queue: str) -> Mapping[str, Any]:
        for entry in (self.body.get("status") or {}).get("queues") or []:
            if entry.get("name") == queue:
                return entry
        return {}


@dataclass(frozen=True)
class QueueView:
    """One queue as the tick sees it: its spec, its worker Deployment (None: not created yet), its pods."""

    queue: QueueSpec
    deployment: Manifest | None
    pods: Sequence[WorkerPod]

    @property
    def replicas(self) -> int:
        return int((self.deployment or {}).get("spec", {}).get("replicas", 0))

    @property
    def pod_names(self) -> set[str]:
        """The pods whose worker container runs: only they can hold a task (a crash-looping pod's
        last heartbeat does not make it busy for ever)."""
        return {pod.name for pod in self.pods if pod.running_since is not None}


def observe_queue(tick: Tick, view: QueueView) -> scaling_policy.Observation | scaling_policy.Unknown:
    """Pending from the broker, in flight from the heartbeats of the queue's workers."""
    depth = None if tick.depths is None else tick.depths.get(view.queue.name)
    if depth is None:
        return scaling_policy.Unknown(tick.unreadable or "broker unreadable")
    if not view.pods:  # no worker can hold a task: nothing to ask the heartbeats
        return scaling_policy.Observation(pending=depth.pending, in_flight=depth.reserved, busy_workers=0)
    try:
        activity = tick.session.activity(view.queue.name, view.pod_names)
    except BrokerUnavailable as error:
        return scaling_policy.Unknown(str(error))
    return scaling_policy.Observation(pending=depth.pending, in_flight=depth.reserved + activity.in_flight,
                                      busy_workers=len(activity.busy_pods))


def _busy_pods(tick: Tick, view: QueueView, heartbeats: Mapping[str, WorkerState] | None) -> set[str]:
    """The queue's pods running a task, asked of the workers right now (a silent one counts as busy).

    Only running workers that have heartbeated are asked: one that never came online holds no task,
    and a pod whose worker cannot start (crash loop, broker unreachable from it) must not count as
    busy for ever. Without heartbeats to go by, every running pod is asked, and one that does not
    answer is busy.
    """
    try:
        known = set(tick.session.activity(view.queue.name, view.pod_names).busy_pods)
    except BrokerUnavailable:
        known = set()
    asked = [pod for pod in view.pods if pod.name in view.pod_names and (heartbeats is None or pod.name in heartbeats)]
    if not asked:
        return known
    names = {worker_hostname(view.queue.name, pod.name): pod.name for pod in asked}
    try:
        answered = tick.session.busy_workers(list(names), timeout=INSPECT_TIMEOUT_SECONDS)
    except BrokerUnavailable as error:
        logger.warning("cannot ask %s's workers which are busy, keeping them all: %s", view.queue.name, error)
        return view.pod_names
    return {names[name] for name in answered if name in names} | known


def _protect_busy_pods(tick: Tick, view: QueueView, busy: set[str]) -> None:
    """Price the queue's pods for the ReplicaSet controller: busy ones dear, idle ones cheap."""
    for pod in view.pods:
        cost = str(BUSY_POD_COST if pod.name in busy else IDLE_POD_COST)
        if pod.annotations.get(DELETION_COST) != cost:
            try:
                tick.runtime.kube.annotate("v1", "Pod", tick.identity.namespace, pod.name, {DELETION_COST: cost})
            except KubeError as error:
                if not error.not_found:  # a pod that left since the index saw it needs no price
                    raise


def _scale(tick: Tick, view: QueueView, decision: scaling_policy.Decision, busy: set[str] | None) -> None:
    runtime, identity = tick.runtime, tick.identity
    deployment = naming.worker_name(identity.name, view.queue.name)
    if busy is not None:
        _protect_busy_pods(tick, view, busy)
    runtime.kube.scale(identity.namespace, deployment, decision.replicas, runtime.settings.scaler_field_manager)
    reason = EventReason.SCALED_UP if decision.direction == "up" else EventReason.SCALED_DOWN
    message = f"{deployment}: {decision.current} → {decision.replicas} replicas ({decision.reason})"
    logger.info("%s/%s %s", identity.namespace, identity.name, message)
    runtime.kube.post_event(tick.body, "Normal", reason, message)
    metrics.SCALE_EVENTS.labels(identity.namespace, identity.name, view.queue.name, decision.direction).inc()


def _decide(tick: Tick, view: QueueView, observation: scaling_policy.Observation | scaling_policy.Unknown,
            policy: scaling_policy.ScalingPolicy, memory: QueueMemory, heartbeats: Mapping[str, WorkerState] | None,
            ) -> tuple[scaling_policy.Decision, set[str] | None]:
    """The policy's decision; before a scale-down, checked against the workers' own answer of which are
    busy now (heartbeats are up to 2 s old: a worker that took tasks since would look idle). Returns
    the busy pods too when it asked, for pricing them."""
    current, now = view.replicas, time.monotonic()
    decision = scaling_policy.decide(observation, policy, memory.history, current, now)
    if decision.direction != "down" or not view.pods or not isinstance(observation, scaling_policy.Observation):
        return decision, None
    busy = _busy_pods(tick, view, heartbeats)
    if len(busy) > observation.busy_workers:
        observation = dataclasses.replace(observation, busy_workers=len(busy))
        decision = scaling_policy.decide(observation, policy, memory.history, current, now)
    return decision, busy


def tick_queue(tick: Tick, view: QueueView) -> QueueOutcome:
    """Measure one queue, check its workers' health and, when it is autoscaled and has its Deployment,
    scale it."""
    queue, current = view.queue, view.replicas
    memory = tick.runtime.queue_memory(tick.identity.uid, queue.name)
    observation = observe_queue(tick, view)
    heartbeats = _heartbeats(tick, view)
    pending_now = observation.pending if isinstance(observation, scaling_policy.Observation) else None
    restarts = check_workers(tick, view, heartbeats, pending_now, memory)
    desired, wake_at_growth = current, None
    if queue.autoscaling is not None and view.deployment is not None:
        policy = scaling_policy.ScalingPolicy.from_spec(queue.autoscaling, tick.spec.autoscaling)
        decision, busy = _decide(tick, view, observation, policy, memory, heartbeats)
        memory.history = decision.history
        desired = decision.desired if decision.desired is not None else current
        if decision.changed:
            _scale(tick, view, decision, busy)
            memory.last_scale_time = format_time(datetime.datetime.now(datetime.timezone.utc))
        wake_at_growth = scaling_policy.growth_to_scale_up(observation, policy, decision.replicas)
    elif queue.autoscaling is not None:
        desired = 0
    previous = tick.previous_queue_status(queue.name)
    if isinstance(observation, scaling_policy.Observation):
        pending, in_flight = observation.pending, observation.in_flight
    else:  # show the last figures known, not zeros
        pending, in_flight = int(previous.get("pending", 0)), int(previous.get("inFlight", 0))
    metrics.record_queue(tick.identity, queue.name, pending, in_flight, desired, current)
    return QueueOutcome(name=queue.name, pending=pending, in_flight=in_flight, desired=desired,
                        last_scale_time=memory.last_scale_time or previous.get("lastScaleTime"),
                        wake_at_growth=wake_at_growth,
                        measured=isinstance(observation, scaling_policy.Observation),
                        restarts=restarts, last_restart=memory.last_restart or previous.get("lastRestart"))


# --- worker health --------------------------------------------------------------------------------

def _heartbeats(tick: Tick, view: QueueView) -> dict[str, WorkerState] | None:
    """The latest heartbeat of each of the queue's pods that has one; None: no heartbeats to go by."""
    if not view.pods:
        return {}
    try:
        states = tick.session.workers(view.queue.name, view.pod_names)
    except BrokerUnavailable:
        return None
    return {state.pod: state for state in states if state.pod}


def check_workers(tick: Tick, view: QueueView, heartbeats: Mapping[str, WorkerState] | None, pending: int | None,
                  memory: QueueMemory) -> int:
    """Readiness gates, stuck workers and restarts of one queue's pods (workerhealth.py); acts on them
    and returns the pods' container restarts, summed."""
    queue, identity = view.queue, tick.identity
    facts = workerhealth.QueueFacts(
        hostname_of={pod.name: worker_hostname(queue.name, pod.name) for pod in view.pods},
        settings=queue.workers, pods=view.pods, heartbeats=heartbeats, pending=pending)
    verdict = workerhealth.assess(facts, memory.pods, time.monotonic())
    memory.pods = verdict.memory
    for change in verdict.gates:
        _set_gate(tick, change)
    for stuck in verdict.stuck:
        _report_stuck(tick, view, stuck)
    for restart in verdict.restarts:
        _report_restart(tick, view, restart)
        memory.last_restart = _restart_status(restart)
    labels = (identity.namespace, identity.name, queue.name)
    metrics.QUEUE_CONSUMING_WORKERS.labels(*labels).set(verdict.consuming)
    if heartbeats is not None:
        metrics.record_workers(identity, queue.name,
                               up={facts.hostname_of[pod]: state.active for pod, state in heartbeats.items()
                                   if not state.silent and pod in facts.hostname_of},
                               down=[facts.hostname_of[pod] for pod, state in heartbeats.items()
                                     if state.silent and pod in facts.hostname_of])
    return sum(pod.restarts for pod in view.pods)


def _set_gate(tick: Tick, change: workerhealth.GateChange) -> None:
    condition = {"type": naming.CONDITION_CONSUMING, "status": change.status, "reason": change.reason,
                 "message": change.message,
                 "lastTransitionTime": format_time(datetime.datetime.now(datetime.timezone.utc))}
    try:
        tick.runtime.kube.set_pod_condition(tick.identity.namespace, change.pod, condition)
    except KubeError as error:
        if not error.not_found:  # a pod gone needs no gate; anything else is retried next tick
            logger.warning("cannot set %s on pod %s/%s: %s", naming.CONDITION_CONSUMING, tick.identity.namespace,
                           change.pod, error)


def _report_stuck(tick: Tick, view: QueueView, stuck: workerhealth.Stuck) -> None:
    identity, health = tick.identity, view.queue.workers.health
    action = ("deleting it: its Deployment starts another" if health.restarts
              else "reported only (workers.health.action: Report)")
    message = f"pod {stuck.pod}: {stuck.message}; {action}"
    logger.warning("%s/%s %s", identity.namespace, identity.name, message)
    tick.runtime.kube.post_event(tick.body, "Warning", EventReason.WORKER_STUCK, message)
    metrics.STUCK_WORKERS.labels(identity.namespace, identity.name, view.queue.name, stuck.evidence).inc()
    if health.restarts:
        tick.runtime.kube.delete("v1", "Pod", identity.namespace, stuck.pod, uid=stuck.uid or None)


def _report_restart(tick: Tick, view: QueueView, restart: workerhealth.Restart) -> None:
    identity = tick.identity
    logger.warning("%s/%s %s", identity.namespace, identity.name, restart.message())
    tick.runtime.kube.post_event(tick.body, "Warning", EventReason.WORKER_RESTARTED, restart.message())
    metrics.WORKER_RESTARTS.labels(identity.namespace, identity.name, view.queue.name,
                                   restart.reason).inc(restart.restarts)


def _restart_status(restart: workerhealth.Restart) -> dict[str, Any]:
    entry: dict[str, Any] = {"pod": restart.pod, "reason": restart.reason, "inFlight": restart.in_flight}
    if restart.exit_code is not None:
        entry["exitCode"] = restart.exit_code
    if restart.finished_at:
        entry["time"] = restart.finished_at
    return entry


# --- status ---------------------------------------------------------------------------------------

def autoscaling_condition(spec: TaskQueueSpec, unreadable: str | None, ever_read: bool) -> Condition:
    if unreadable is None:
        return Condition.true(Autoscaling.TYPE, Autoscaling.QUEUE_DEPTH_READ,
                              f"queue depth read every {spec.autoscaling.poll_interval_seconds}s")
    if not ever_read:  # a broker still starting (say, the managed Redis) is no outage
        return Condition.unknown(Autoscaling.TYPE, Autoscaling.WAITING_FOR_BROKER,
                                 f"the broker has not answered yet: {unreadable}")
    return Condition.false(Autoscaling.TYPE, Autoscaling.BROKER_UNAVAILABLE,
                           f"replicas held where they are: {unreadable}")


def compose_scaler_status(body: Mapping[str, Any], identity: ObjectIdentity, spec: TaskQueueSpec,
                          outcomes: Sequence[QueueOutcome], unreadable: str | None,
                          ever_read: bool = True) -> dict[str, Any]:
    """The status fields the scaler owns: per-queue figures, the pending total, the Autoscaling condition
    (only while some queue is autoscaled)."""
    updates = [autoscaling_condition(spec, unreadable, ever_read)] if spec.autoscaled_queues else []
    return STATUS.compose(body.get("status") or {}, updates, generation=identity.generation,
                          now=datetime.datetime.now(datetime.timezone.utc),
                          drop=() if updates else (Autoscaling.TYPE,),
                          fields={"pending": sum(o.pending for o in outcomes)}, queues=[o.status() for o in outcomes])


def outage_events(old: Mapping[str, Any], new: Mapping[str, Any]) -> Event | None:
    """One Warning when the broker stops answering the scaler, one Normal when it answers again; nothing
    for the first reading or a broker that has not answered yet (Unknown)."""
    change = transition(old, new, Autoscaling.TYPE)
    if change is None or change.after["status"] == "Unknown":
        return None
    if change.after["status"] == "True":
        recovered = change.before is not None and change.before.get("status") == "False"
        return Event("Normal", EventReason.BROKER_AVAILABLE, "scaling resumed: " + change.after["message"]) \
            if recovered else None
    return Event("Warning", change.after["reason"], change.after["message"])


def _read_depths(session: BrokerSession, spec: TaskQueueSpec) -> tuple[dict[str, QueueDepth] | None, str | None]:
    try:
        return session.read_depths([queue.name for queue in spec.queues]), None
    except BrokerUnavailable as error:
        return None, str(error)


def tick(runtime: Runtime, body: Mapping[str, Any], observed: Sequence[Manifest], pods_of: PodsOfQueue) -> bool:
    """One scaler pass over a TaskQueue; writes only what changed. False while there is not yet all
    there is to measure (not reconciled, broker never read, a readable broker whose workers'
    heartbeats cannot be read yet): the caller then comes back soon rather than after
    pollIntervalSeconds."""
    identity = ObjectIdentity.from_body(body)
    if pause.is_paused(body):
        return True  # no scaling, no worker health, no status until the annotation goes (pause.py)
    try:
        spec = TaskQueueSpec.parse(body.get("spec"))
    except SpecError:
        return True  # the reconciler reports it; nothing to hurry for
    children = Children(observed)
    url = children.broker_url(identity.name)
    if url is None:
        return False  # not reconciled yet
    started = time.perf_counter()
    session = runtime.brokers.session(identity.uid, url)
    depths, unreadable = _read_depths(session, spec)
    if unreadable is not None:
        metrics.BROKER_ERRORS.labels(identity.namespace, identity.name).inc()
    else:
        runtime.mark_broker_read(identity.uid)
    metrics.BROKER_UP.labels(identity.namespace, identity.name).set(unreadable is None)
    this_tick = Tick(runtime, body, identity, spec, session, depths, unreadable)
    views = [QueueView(queue, children.deployment(naming.worker_name(identity.name, queue.name)),
                       pods_of(queue.dns_name)) for queue in spec.queues]
    outcomes = [tick_queue(this_tick, view) for view in views]
    session.watch_growth(identity.uid, {outcome.name: outcome.wake_at_growth for outcome in outcomes
                                        if outcome.wake_at_growth is not None})
    ever_read = runtime.broker_ever_read(identity.uid)
    status = compose_scaler_status(body, identity, spec, outcomes, unreadable, ever_read)
    publish(runtime.kube, body, STATUS, status, runtime.settings.scaler_field_manager, outage_events,
            runtime.status_writes)
    metrics.TICK_SECONDS.observe(time.perf_counter() - started)
    # a queue is only watched for arrivals once it has its Deployment
    every_deployment = all(view.deployment is not None for view in views if view.queue.autoscaled)
    # a broker that cannot be read waits for the next poll; heartbeats still warming up do not
    heard_workers = unreadable is not None or all(outcome.measured for outcome in outcomes)
    return every_deployment and ever_read and heard_workers
