"""Names, labels and annotations of everything the operator creates.

One place for the strings users' scripts and dashboards rely on (API.md, "Children").
"""

from __future__ import annotations

import re
from typing import Final, Literal

GROUP: Final = "celery-operator.dev"
VERSION: Final = "v1alpha1"
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
ANNOTATION_QUEUE_NAME: Final = f"{GROUP}/queue-name"

APP_NAME: Final = "celery"
MANAGED_BY: Final = "celery-operator"
# The field manager for server-side apply of everything the reconciler owns.
FIELD_MANAGER: Final = "celery-operator"

Component = Literal["broker", "worker", "beat", "flower"]
BROKER: Final[Component] = "broker"
WORKER: Final[Component] = "worker"
BEAT: Final[Component] = "beat"
FLOWER: Final[Component] = "flower"

# Key names inside the `<tq>-broker` Secret.
BROKER_SECRET_URL_KEY: Final = "url"
BROKER_SECRET_PASSWORD_KEY: Final = "password"

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


def flower_name(taskqueue: str) -> str:
    return f"{taskqueue}-flower"


def selector_labels(taskqueue: str, component: Component, queue: str | None = None) -> dict[str, str]:
    """The labels a child's selector matches: instance, component and, for workers, the queue."""
    labels = {LABEL_INSTANCE: taskqueue, LABEL_COMPONENT: component}
    if queue is not None:
        labels[LABEL_QUEUE] = queue_dns_name(queue)
    return labels


def component_labels(taskqueue: str, component: Component, queue: str | None = None) -> dict[str, str]:
    """All labels of a child object (and of its pods)."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_MANAGED_BY: MANAGED_BY,
        **selector_labels(taskqueue, component, queue),
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
