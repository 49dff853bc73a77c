"""Prometheus metrics of the operator, served on /metrics when CELERY_OPERATOR_METRICS_PORT is set."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from .models import ObjectIdentity

_QUEUE_LABELS = ("namespace", "taskqueue", "queue")

QUEUE_PENDING = Gauge("celery_operator_queue_pending", "Messages waiting in the broker for the queue.",
                      _QUEUE_LABELS)
QUEUE_IN_FLIGHT = Gauge("celery_operator_queue_in_flight",
                        "Messages reserved or executing on the queue's workers.", _QUEUE_LABELS)
QUEUE_DESIRED_REPLICAS = Gauge("celery_operator_queue_desired_replicas",
                               "Worker replicas the scaler wants for the queue (before stabilization).",
                               _QUEUE_LABELS)
QUEUE_REPLICAS = Gauge("celery_operator_queue_replicas", "The queue's worker Deployment spec.replicas.",
                       _QUEUE_LABELS)
SCALE_EVENTS = Counter("celery_operator_scale_total", "Scale operations by direction.",
                       (*_QUEUE_LABELS, "direction"))
BROKER_ERRORS = Counter("celery_operator_broker_errors_total", "Scaler ticks that could not read the broker.",
                        ("namespace", "taskqueue"))
TICK_SECONDS = Histogram("celery_operator_scaler_tick_seconds", "Duration of one scaler tick of a TaskQueue.",
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

QUEUE_CONSUMING_WORKERS = Gauge("celery_operator_queue_consuming_workers",
                                "The queue's worker pods whose Celery worker consumes (readiness gate True).",
                                _QUEUE_LABELS)
WORKER_RESTARTS = Counter("celery_operator_worker_restarts_total",
                          "Restarts of the queue's worker containers, by the kubelet's reason (OOMKilled, Error, ...).",
                          (*_QUEUE_LABELS, "reason"))
STUCK_WORKERS = Counter("celery_operator_stuck_workers_total",
                        "Workers found stuck, by evidence (heartbeats-stopped, idle-with-backlog).",
                        (*_QUEUE_LABELS, "evidence"))
BROKER_UP = Gauge("celery_operator_broker_up", "1 when the scaler's last tick read the broker, else 0.",
                  ("namespace", "taskqueue"))
BEAT_UP = Gauge("celery_operator_beat_up", "1 while the TaskQueue's beat is running and leading (BeatReady), else 0;"
                " absent while no PeriodicJob refers to the TaskQueue.", ("namespace", "taskqueue"))

LEADER = Gauge("celery_operator_leader", "1 while this replica acts (it holds the operator's Lease, or runs without"
               " leader election), 0 while it stands by.")

# The names and labels of the widely used Celery exporter (danihodovic/celery-exporter), so dashboards
# and alerts written for it work on our numbers: `queue_name` and `hostname` as it spells them, plus
# `namespace` and `taskqueue` so that two TaskQueues with a queue or host of one name never share a
# series (`sum by (queue_name)` still reads as it does with the exporter). namespace and taskqueue
# come first in every label tuple: forget_taskqueue matches on the first two.
_EXPORTER_QUEUE_LABELS = ("namespace", "taskqueue", "queue_name")
_EXPORTER_WORKER_LABELS = (*_EXPORTER_QUEUE_LABELS, "hostname")

CELERY_QUEUE_LENGTH = Gauge("celery_queue_length", "Messages waiting in the broker for the queue"
                            " (celery-exporter compatible; the same number as celery_operator_queue_pending).",
                            _EXPORTER_QUEUE_LABELS)
CELERY_WORKER_UP = Gauge("celery_worker_up", "1 while the worker sends heartbeats, 0 while it is known but silent"
                         " or stuck (celery-exporter compatible).", _EXPORTER_WORKER_LABELS)
CELERY_WORKER_TASKS_ACTIVE = Gauge("celery_worker_tasks_active", "Tasks the worker executes now, from its last"
                                   " heartbeat (celery-exporter compatible).", _EXPORTER_WORKER_LABELS)
_PER_WORKER = (CELERY_WORKER_UP, CELERY_WORKER_TASKS_ACTIVE)

_PER_QUEUE = (QUEUE_PENDING, QUEUE_IN_FLIGHT, QUEUE_DESIRED_REPLICAS, QUEUE_REPLICAS)
# The evidences workerhealth reports. Their counters start at 0 with the queue: a series born at its
# first increment hides that increment from increase(), and the CeleryWorkersStuck alert would
# never see a queue's first stuck worker.
STUCK_EVIDENCE = ("heartbeats-stopped", "idle-with-backlog")


def record_queue(identity: ObjectIdentity, queue: str, pending: int, in_flight: int, desired: int,
                 replicas: int) -> None:
    labels = (identity.namespace, identity.name, queue)
    for gauge, value in zip(_PER_QUEUE, (pending, in_flight, desired, replicas)):
        gauge.labels(*labels).set(value)
    CELERY_QUEUE_LENGTH.labels(*labels).set(pending)
    for evidence in STUCK_EVIDENCE:
        STUCK_WORKERS.labels(*labels, evidence)


def worker_hostname(name: str) -> str:
    """The exporter's `hostname`: the host part of a Celery node name (`queue@pod` -> `pod`)."""
    return name.partition("@")[2] or name


def record_workers(identity: ObjectIdentity, queue: str, up: Mapping[str, int], down: Collection[str]) -> None:
    """Set the queue's worker series: `up` maps each heartbeating worker to its active tasks, `down`
    names workers known but silent or stuck; the series of any other worker of the queue go (a pod
    that is gone leaves no ghost). A worker in both is up: it heartbeats now."""
    scope = (identity.namespace, identity.name, queue)
    values = {worker_hostname(name): (0, 0) for name in down}
    values.update({worker_hostname(name): (1, active) for name, active in up.items()})
    for hostname, (alive, active) in values.items():
        CELERY_WORKER_UP.labels(*scope, hostname).set(alive)
        CELERY_WORKER_TASKS_ACTIVE.labels(*scope, hostname).set(active)
    for gauge in _PER_WORKER:
        for labels in list(gauge._metrics):
            if labels[:3] == scope and labels[3] not in values:
                gauge.remove(*labels)


def forget_taskqueue(namespace: str, name: str) -> None:
    """Drop the series of a deleted TaskQueue, so dashboards do not show ghosts."""
    for gauge in (*_PER_QUEUE, QUEUE_CONSUMING_WORKERS, WORKER_RESTARTS, STUCK_WORKERS, BROKER_UP, BEAT_UP,
                  CELERY_QUEUE_LENGTH, *_PER_WORKER):
        for labels in list(gauge._metrics):  # prometheus_client has no public way to list label sets
            if labels[:2] == (namespace, name):
                gauge.remove(*labels)


_serving: set[tuple[int, str]] = set()


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Serve /metrics, once per process: a standby serves from before the election, and the
    startup hook of the leader it becomes asks again."""
    if port and (port, address) not in _serving:
        start_http_server(port, addr=address)
        _serving.add((port, address))
