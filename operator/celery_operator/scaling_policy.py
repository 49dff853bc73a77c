"""The scaling policy: how many workers a queue should have. Pure: no I/O, no clock reads (the I/O
tick that applies it is scaler.py).

One call per autoscaled queue and scaler tick::

    decision = decide(observation, policy, history, current_replicas, now)
    history = decision.history          # keep it for the next tick of this queue
    if decision.changed: scale to decision.replicas, with decision.reason in the Event

The rules, in the order they apply:

1. Desired = clamp(ceil((pending + inFlight) / targetTasksPerReplica), minReplicas, maxReplicas).
   This is `Decision.desired`, the status field `desiredReplicas` (before stabilization).
2. Scale up at once: desired >= current -> desired.
3. Scale down only as far as the highest desired value seen over the last
   `scaleDownStabilizationSeconds` (samples at `now - window` or later count), and never above
   current: stabilization delays a scale-down, it never causes a scale-up. Until the scaler has
   observed the queue for a whole window (operator start, broker back after an outage) the
   current replica count counts as one of those samples: it cannot know what was desired before.
4. Never below the workers that have tasks in flight (`Observation.busy_workers`), as far as they
   are among the current replicas: a busy-worker count never scales up by itself. And not down at
   all while messages wait (pending > 0): a worker seen idle then takes the next message within
   milliseconds, so the pod the ReplicaSet removes would be busy by the time its SIGTERM lands
   (and a warm shutdown that hands back reserved messages while its last tasks are acknowledged is
   how a task runs twice). The backlog drains first; the window then applies as usual.
5. To zero only when minReplicas is 0 and pending + inFlight was 0 at every observation over a
   whole window (and the window has been observed in full); otherwise at least 1. From zero on
   the first tick that sees a message (rule 2).
6. Always within [minReplicas, maxReplicas]: a lowered maxReplicas is the user's explicit limit and
   wins over rule 4 (workers leaving get a warm shutdown and their termination grace period).

Between ticks, `growth_to_scale_up` says by how many messages the backlog must grow before rule 1
wants more workers than the queue has: the scaler is woken once it has, rather than at its next
poll (a queue at zero: its first message).

An `Unknown` observation (the broker cannot be read) holds the current replicas. It also counts
as "maybe busy": it adds `current` as a desired sample and breaks the idle streak, so the scaler
scales down only after a full window of readable, idle data.

`now` is any monotonic clock in seconds (time.monotonic() in the operator); only differences matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # typing only: the scaler stays importable without the models module
    from .models import AutoscalingBehavior, QueueAutoscaling

__all__ = [
    "Decision",
    "History",
    "Observation",
    "Sample",
    "ScalingPolicy",
    "Unknown",
    "decide",
    "growth_to_scale_up",
    "raw_desired",
]


@dataclass(frozen=True)
class ScalingPolicy:
    """One queue's `autoscaling` plus the TaskQueue's `autoscaling.scaleDownStabilizationSeconds`."""

    min_replicas: int
    max_replicas: int
    target_tasks_per_replica: int
    scale_down_stabilization_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError(f"minReplicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < 1:
            raise ValueError(f"maxReplicas must be >= 1, got {self.max_replicas}")
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"maxReplicas {self.max_replicas} is below minReplicas {self.min_replicas}")
        if self.target_tasks_per_replica < 1:
            raise ValueError(f"targetTasksPerReplica must be >= 1, got {self.target_tasks_per_replica}")
        if self.scale_down_stabilization_seconds < 0:
            raise ValueError(
                f"scaleDownStabilizationSeconds must be >= 0, got {self.scale_down_stabilization_seconds}"
            )

    @classmethod
    def from_spec(cls, autoscaling: QueueAutoscaling, behavior: AutoscalingBehavior) -> ScalingPolicy:
        """From the parsed models: a queue's `autoscaling` and the TaskQueue's `autoscaling`."""
        return cls(
            min_replicas=autoscaling.min_replicas,
            max_replicas=autoscaling.max_replicas,
            target_tasks_per_replica=autoscaling.target_tasks_per_replica,
            scale_down_stabilization_seconds=float(behavior.scale_down_stabilization_seconds),
        )

    @property
    def window(self) -> float:
        return float(self.scale_down_stabilization_seconds)


@dataclass(frozen=True)
class Observation:
    """What the broker and the workers said about one queue on this tick."""

    pending: int  # messages waiting in the broker
    in_flight: int  # messages reserved or executing on this queue's workers
    busy_workers: int = 0  # this queue's worker pods with at least one task in flight

    def __post_init__(self) -> None:
        if self.pending < 0 or self.in_flight < 0 or self.busy_workers < 0:
            raise ValueError(f"observation counts must be >= 0: {self}")

    @property
    def work(self) -> int:
        return self.pending + self.in_flight


@dataclass(frozen=True)
class Unknown:
    """The queue could not be measured on this tick (broker unreadable); `reason` is for humans."""

    reason: str = "broker unreadable"


@dataclass(frozen=True)
class Sample:
    time: float
    desired: int


@dataclass(frozen=True)
class History:
    """What one queue's scaler remembers between ticks; start with `History()`.

    samples: (time, desired) of recent ticks, oldest first, pruned to the stabilization window.
    observed_since: time of the first tick of this history (None before the first tick).
    last_busy: last tick on which the queue was not provably idle (work seen, or unknown).
    """

    samples: tuple[Sample, ...] = ()
    observed_since: float | None = None
    last_busy: float | None = None


Direction = Literal["up", "down", "none"]


@dataclass(frozen=True)
class Decision:
    desired: int | None  # rule 1, before stabilization; None when the observation is Unknown
    replicas: int  # what the worker Deployment should have
    current: int  # what it had
    reason: str  # one line for an Event message or a log line
    history: History  # pass to the next decide() of this queue

    @property
    def changed(self) -> bool:
        return self.replicas != self.current

    @property
    def direction(self) -> Direction:
        if self.replicas > self.current:
            return "up"
        if self.replicas < self.current:
            return "down"
        return "none"


def raw_desired(work: int, policy: ScalingPolicy) -> tuple[int, int]:
    """(unclamped, clamped) desired replicas for `work` = pending + inFlight tasks."""
    unclamped = math.ceil(work / policy.target_tasks_per_replica) if work > 0 else 0
    return unclamped, min(max(unclamped, policy.min_replicas), policy.max_replicas)


def growth_to_scale_up(observation: Observation | Unknown, policy: ScalingPolicy, replicas: int) -> int | None:
    """How many more messages, come before the next tick, make rule 1 want more than `replicas`
    workers (at least 1: a queue at zero wakes on its first message). None when none would: the
    queue is at maxReplicas, or its broker could not be read."""
    if isinstance(observation, Unknown) or replicas >= policy.max_replicas:
        return None
    return max(1, replicas * policy.target_tasks_per_replica - observation.work + 1)


def _prune(samples: tuple[Sample, ...], since: float) -> tuple[Sample, ...]:
    return tuple(s for s in samples if s.time >= since)


def decide(
    observation: Observation | Unknown,
    policy: ScalingPolicy,
    history: History,
    current_replicas: int,
    now: float,
) -> Decision:
    """Replicas for one queue on this tick; see the module docstring for the rules."""
    if current_replicas < 0:
        raise ValueError(f"current_replicas must be >= 0, got {current_replicas}")
    window = policy.window
    since = now - window
    observed_since = history.observed_since if history.observed_since is not None else now

    if isinstance(observation, Unknown):
        return Decision(
            desired=None,
            replicas=current_replicas,
            current=current_replicas,
            reason=f"{observation.reason}: holding {current_replicas} replicas",
            history=History(
                samples=_prune(history.samples, since) + (Sample(now, current_replicas),),
                observed_since=observed_since,
                last_busy=now,
            ),
        )

    work = observation.work
    unclamped, desired = raw_desired(work, policy)
    samples = _prune(history.samples, since) + (Sample(now, desired),)
    last_busy = now if work > 0 else history.last_busy
    new_history = History(samples=samples, observed_since=observed_since, last_busy=last_busy)

    reason = (
        f"pending {observation.pending} + inFlight {observation.in_flight} "
        f"over target {policy.target_tasks_per_replica} → {unclamped}"
    )
    if unclamped > policy.max_replicas:
        reason += f", capped at max {policy.max_replicas}"
    elif unclamped < policy.min_replicas:
        reason += f", raised to min {policy.min_replicas}"

    if desired >= current_replicas:
        return Decision(desired, desired, current_replicas, reason, new_history)

    # Scaling down: as far as the window and the busy workers allow, never up because of them.
    full_window = observed_since <= since
    highest = max(s.desired for s in samples)
    notes: list[str] = []
    replicas = desired
    if not full_window and current_replicas > replicas:
        replicas = current_replicas
        notes.append(f"holding {current_replicas} until {_seconds(window)} have been observed")
    elif highest > replicas:
        replicas = min(highest, current_replicas)
        notes.append(f"holding {replicas} (highest desired in the last {_seconds(window)})")

    busy_floor = min(observation.busy_workers, current_replicas)
    if observation.pending > 0 and replicas < current_replicas:
        replicas = current_replicas
        notes.append(f"holding {current_replicas} while {observation.pending} messages wait")
    elif busy_floor > replicas:
        replicas = busy_floor
        notes.append(f"keeping {busy_floor} busy workers")

    if replicas == 0 and current_replicas > 0:
        idle_for_window = full_window and (history.last_busy is None or history.last_busy <= since)
        if not idle_for_window:  # an Unknown tick inside the window, taken while at zero
            replicas = 1
            notes.append(f"not to zero before {_seconds(window)} idle")

    if replicas > policy.max_replicas:
        replicas = policy.max_replicas
        notes.append(f"capped at max {policy.max_replicas}")
    replicas = max(replicas, policy.min_replicas)

    if notes:
        reason += "; " + ", ".join(notes)
    return Decision(desired, replicas, current_replicas, reason, new_history)


def _seconds(value: float) -> str:
    return f"{value:g}s"
