"""Names, labels and annotations of everything the operator creates.

One place for the strings users' scripts and dashboards rely on (API.md, "Children").
"""

from __future__ import annotations

import re
from typing import Final, Literal

GROUP: Final = "celery-operator.dev"
VERSION: Final = "v1alpha1"
# The operator's release: with pyproject.toml and the chart (tests/unit/test_release.py). Each
# TaskQueue's status says which release last reconciled it.
OPERATOR_VERSION: Final = "0.2.0"
API_VERSION: Final = f"{GROUP}/{VERSION}"
TASKQUEUE_KIND: Final = "TaskQueue"
TASKQUEUE_PLURAL: Final = "taskqueues"
PERIODICJOB_KIND: Final = "PeriodicJob"
PERIODICJOB_PLURAL: Final = "periodicjobs"

LABEL_NAME: Final = "app.kubernetes.io/name"
LABEL_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
LABEL_QUEUE: Final = f"{GROUP}/queue"
# Tells the beat's two Deployments apart (both are component=beat): the scheduler, and the small
# Redis that holds the schedule state when the broker is not Redis.
LABEL_BEAT_ROLE: Final = f"{GROUP}/beat-role"
BEAT_ROLE_SCHEDULER: Final = "scheduler"
BEAT_ROLE_STATE: Final = "state"
ANNOTATION_QUEUE_NAME: Final = f"{GROUP}/queue-name"
# Pods of the TaskQueue's namespace labelled `celery-operator.dev/producer: <tq>` (a web app that
# sends tasks) may connect to its managed broker through the NetworkPolicy `<tq>-broker`.
LABEL_PRODUCER: Final = f"{GROUP}/producer"
# The worker pods' readiness gate: True while the pod's Celery worker consumes (its heartbeats),
# set by the operator on the pod's status.
CONDITION_CONSUMING: Final = f"{GROUP}/consuming"
WORKER_CONTAINER: Final = "worker"  # the container of a worker pod that runs Celery
# On every child: the hash of the manifest last applied to it (drift.py), so that an edit which only
# removes something is seen as a change.
ANNOTATION_APPLIED_HASH: Final = f"{GROUP}/applied-hash"
# On a TaskQueue: `paused` stops every write of the operator to it and its children (pause.py).
ANNOTATION_RECONCILE: Final = f"{GROUP}/reconcile"
RECONCILE_PAUSED: Final = "paused"

APP_NAME: Final = "celery"
MANAGED_BY: Final = "celery-operator"
# The field manager for server-side apply of everything the reconciler owns.
FIELD_MANAGER: Final = "celery-operator"

Component = Literal["broker", "worker", "beat", "flower"]
BROKER: Final[Component] = "broker"
WORKER: Final[Component] = "worker"
BEAT: Final[Component] = "beat"
FLOWER: Final[Component] = "flower"

# Key names inside the `<tq>-broker` Secret (and the `<tq>-beat-state` Secret).
BROKER_SECRET_URL_KEY: Final = "url"
BROKER_SECRET_PASSWORD_KEY: Final = "password"

# The environment of the Celery pods and of the operator's beat program (which reads the same names).
BROKER_URL_ENV: Final = "CELERY_BROKER_URL"
RESULT_BACKEND_ENV: Final = "CELERY_RESULT_BACKEND"
BEAT_STATE_URL_ENV: Final = "CELERY_OPERATOR_BEAT_STATE_URL"  # the Redis holding the schedule state
BEAT_KEY_PREFIX_ENV: Final = "CELERY_OPERATOR_BEAT_KEY_PREFIX"  # the TaskQueue's keys in it
BEAT_INSTANCE_ENV: Final = "CELERY_OPERATOR_BEAT_INSTANCE"  # this beat's name in the leader lease

# Where the beat keeps its schedule state in Redis: one key prefix per TaskQueue, naming its namespace
# and name, so several TaskQueues can share one Redis. The braces are a Redis Cluster hash tag:
# every key of one TaskQueue lands in the same slot, so the beat's Lua scripts may touch several.
# The keys under it: beat/state.py.
BEAT_KEY_ROOT: Final = "celery-operator:beat:"
_BEAT_KEY_PREFIX = re.compile(r"^celery-operator:beat:\{(?P<namespace>[^/{}]+)/(?P<taskqueue>[^/{}]+)\}:$")

REDIS_PORT: Final = 6379
FLOWER_PORT: Final = 5555

MAX_TASKQUEUE_NAME_LENGTH: Final = 40
MAX_QUEUE_NAME_LENGTH: Final = 50
QUEUE_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]{0,48}[A-Za-z0-9])?$")

_DNS_UNSAFE = str.maketrans({"_": "-", ".": "-", ":": "-"})


def queue_dns_name(queue: str) -> str:
    """The queue name made safe for object names and label values.

    Lower-cased, with `_`, `.` and `:` turned into `-` (`High_Priority` -> `high-priority`).
    """
    return queue.lower().translate(_DNS_UNSAFE)


def broker_name(taskqueue: str) -> str:
    """Secret, Deployment, Service and PVC of the broker."""
    return f"{taskqueue}-broker"


def worker_name(taskqueue: str, queue: str) -> str:
    """The worker Deployment of one queue (`queue` is the Celery queue name, not yet DNS-safe)."""
    return f"{taskqueue}-worker-{queue_dns_name(queue)}"


def beat_name(taskqueue: str) -> str:
    return f"{taskqueue}-beat"


def beat_state_name(taskqueue: str) -> str:
    """Secret, Deployment and Service of the Redis holding the schedule state (AMQP brokers only)."""
    return f"{taskqueue}-beat-state"


def beat_key_prefix(namespace: str, taskqueue: str) -> str:
    """`celery-operator:beat:{<namespace>/<taskqueue>}:`."""
    return f"{BEAT_KEY_ROOT}{{{namespace}/{taskqueue}}}:"


def parse_beat_key_prefix(prefix: str) -> tuple[str, str] | None:
    """(namespace, taskqueue) of a `beat_key_prefix`, None for anything else."""
    match = _BEAT_KEY_PREFIX.match(prefix)
    return (match["namespace"], match["taskqueue"]) if match else None


def flower_name(taskqueue: str) -> str:
    return f"{taskqueue}-flower"


def workers_policy_name(taskqueue: str) -> str:
    """The NetworkPolicy over every worker pod of the TaskQueue."""
    return f"{taskqueue}-workers"


def selector_labels(taskqueue: str, component: Component, queue: str | None = None,
                    beat_role: str | None = None) -> dict[str, str]:
    """The labels a child's selector matches: instance, component and, for workers, the queue;
    for the beat's Deployments, which of the two it is."""
    labels = {LABEL_INSTANCE: taskqueue, LABEL_COMPONENT: component}
    if queue is not None:
        labels[LABEL_QUEUE] = queue_dns_name(queue)
    if beat_role is not None:
        labels[LABEL_BEAT_ROLE] = beat_role
    return labels


def component_labels(taskqueue: str, component: Component, queue: str | None = None,
                     beat_role: str | None = None) -> dict[str, str]:
    """All labels of a child object (and of its pods)."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_MANAGED_BY: MANAGED_BY,
        **selector_labels(taskqueue, component, queue, beat_role),
    }


def owned_children_selector(taskqueue: str) -> str:
    """A label selector (string form) for listing the children of one TaskQueue.

    Labels alone do not prove ownership (another tool may use the same instance value): check the
    controller ownerReference before deleting or overwriting anything listed with it.
    """
    return f"{LABEL_NAME}={APP_NAME},{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INSTANCE}={taskqueue}"


def queue_annotations(queue: str) -> dict[str, str]:
    """The exact queue name, which a label value cannot hold."""
    return {ANNOTATION_QUEUE_NAME: queue}
