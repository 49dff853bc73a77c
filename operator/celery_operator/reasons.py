"""Every condition type the operator writes and the reasons each may carry, one class per type,
plus the reasons of Events that belong to no condition. CamelCase, as users grep for them."""

from __future__ import annotations

from typing import Final


class Ready:
    """A TaskQueue's Ready: True when everything below that applies is True; else False with the
    reason of what blocks the pass, or of the first of BrokerReady, BrokerAcceptingWrites, WorkersReady,
    BeatReady that is not True, or FlowerPodFailing."""

    TYPE: Final = "Ready"
    READY: Final = "Ready"
    INVALID_SPEC: Final = "InvalidSpec"
    NAME_CONFLICT: Final = "NameConflict"
    BROKER_SECRET_NOT_FOUND: Final = "BrokerSecretNotFound"
    BROKER_SECRET_KEY_NOT_FOUND: Final = "BrokerSecretKeyNotFound"
    FLOWER_POD_FAILING: Final = "FlowerPodFailing"


class BrokerReady:
    TYPE: Final = "BrokerReady"
    REACHABLE: Final = "BrokerReachable"
    UNREACHABLE: Final = "BrokerUnreachable"
    STARTING: Final = "BrokerStarting"  # the managed Redis is not available yet, or just became so
    POD_FAILING: Final = "BrokerPodFailing"  # ... because its pod cannot run
    VOLUME_PENDING: Final = "BrokerVolumePending"  # ... because its volume claim cannot bind


class BrokerAcceptingWrites:
    """Only for a Redis broker with a maxmemory: False while Redis is over it (refusing new messages
    with OOM errors under noeviction); left as it was while the broker's memory cannot be read."""

    TYPE: Final = "BrokerAcceptingWrites"
    BELOW_MAX_MEMORY: Final = "BelowMaxMemory"
    FULL: Final = "BrokerFull"


class WorkersReady:
    TYPE: Final = "WorkersReady"
    AVAILABLE: Final = "WorkersAvailable"
    NOT_READY: Final = "WorkersNotReady"
    POD_FAILING: Final = "WorkerPodsFailing"


class BeatReady:
    """Only while PeriodicJobs refer to the TaskQueue."""

    TYPE: Final = "BeatReady"
    RUNNING: Final = "BeatRunning"
    CUSTOM_SCHEDULER: Final = "CustomScheduler"
    NOT_AVAILABLE: Final = "BeatNotAvailable"
    NOT_RUNNING: Final = "BeatNotRunning"
    STATE_UNREACHABLE: Final = "BeatStateUnreachable"
    POD_FAILING: Final = "BeatPodFailing"


class Paused:
    """Only while the annotation celery-operator.dev/reconcile is on the TaskQueue."""

    TYPE: Final = "Paused"
    PAUSED: Final = "ReconcilePaused"  # True: the operator writes nothing to the TaskQueue's children
    INVALID_ANNOTATION: Final = "InvalidAnnotation"  # False: a value other than `paused`; nothing paused
    RESUMED: Final = "ReconcileResumed"  # the Event when the annotation goes


class Autoscaling:
    """The scaler's, only while the TaskQueue has autoscaled queues."""

    TYPE: Final = "Autoscaling"
    QUEUE_DEPTH_READ: Final = "QueueDepthRead"
    WAITING_FOR_BROKER: Final = "WaitingForBroker"  # Unknown: the broker has not answered yet
    BROKER_UNAVAILABLE: Final = "BrokerUnavailable"  # False: replicas held where they are


class PeriodicJobReady:
    """A PeriodicJob's Ready: True once the TaskQueue's beat carries this generation of the job."""

    TYPE: Final = "Ready"
    SCHEDULED: Final = "Scheduled"
    SUSPENDED: Final = "Suspended"
    TASKQUEUE_NOT_FOUND: Final = "TaskQueueNotFound"
    CUSTOM_SCHEDULER: Final = "CustomScheduler"
    INVALID_SCHEDULE: Final = "InvalidSchedule"
    INVALID_SPEC: Final = "InvalidSpec"
    BEAT_NOT_RUNNING: Final = "BeatNotRunning"


class EventReason:
    """Events that report an action rather than a condition."""

    SCALED_UP: Final = "ScaledUp"
    SCALED_DOWN: Final = "ScaledDown"
    BROKER_AVAILABLE: Final = "BrokerAvailable"  # the scaler reads the broker again after an outage
    BROKER_RESTARTED: Final = "BrokerRestarted"  # a new run of redis-server (brokerrestarts.py)
    WORKER_STUCK: Final = "WorkerStuck"  # a worker alive but not consuming (workerhealth.py)
    WORKER_RESTARTED: Final = "WorkerRestarted"  # a worker container restarted (OOMKilled, Error, ...)


# A TaskQueue's Ready=False for one of these is progress (things are starting), told with a
# Normal Event; any other reason is something to fix, told with a Warning.
PROGRESS: Final = frozenset({BrokerReady.STARTING, WorkersReady.NOT_READY, BeatReady.NOT_AVAILABLE})
