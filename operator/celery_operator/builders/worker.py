"""One worker Deployment per queue: `<tq>-worker-<queue-dns>`.

The command is exec form (no shell), so Kubernetes' SIGTERM reaches Celery's main process, which
makes it a warm shutdown: running tasks finish within terminationGracePeriodSeconds. A shell in
between would forward the signal to the whole process group and kill the pool children mid-task.

There is deliberately no probe: `celery inspect ping` costs seconds of CPU per call and restarts
workers that are merely busy. Instead the pod carries a readiness gate the operator sets from the
worker's own heartbeats, and the operator restarts a worker that stopped consuming (workerhealth.py);
a worker that dies exits, and the kubelet restarts it.

Autoscaled queues leave `replicas` out: the scaler owns it through the scale subresource, and the
reconciler's server-side apply then never fights it.
"""

from __future__ import annotations

from .. import naming
from ..models import ObjectIdentity, QueueSpec, TaskQueueSpec
from .common import (
    DEFAULT_WORKER_RESOURCES,
    Manifest,
    celery_container,
    celery_pod_template,
    deployment,
    resources_or_default,
)

WORKER_CONTAINER: str = naming.WORKER_CONTAINER


def worker_command(app: str, queue: QueueSpec) -> list[str]:
    """`celery -A <app> worker -Q <queue> --hostname <queue>@%h ...`; %h is expanded by Celery.

    The hostname names the queue in every worker heartbeat, which is how in-flight work is
    counted per queue. Mingle and gossip are off unless asked for: mingle makes every start wait
    for the other workers' replies (about a second), and nothing here needs gossip.
    """
    settings = queue.workers
    command = [
        "celery", "-A", app, "worker",
        "-Q", queue.name,
        "--hostname", f"{queue.name}@%h",
        "--concurrency", str(settings.concurrency),
        "--pool", settings.pool,
        "--prefetch-multiplier", str(settings.prefetch_multiplier),
    ]
    if settings.max_tasks_per_child > 0:
        command += ["--max-tasks-per-child", str(settings.max_tasks_per_child)]
    if not settings.mingle:
        command.append("--without-mingle")
    if not settings.gossip:
        command.append("--without-gossip")
    command += list(settings.extra_args)
    return command


def build_worker_deployment(owner: ObjectIdentity, spec: TaskQueueSpec, queue: QueueSpec) -> Manifest:
    container = celery_container(
        spec,
        taskqueue=owner.name,
        name=WORKER_CONTAINER,
        command=worker_command(spec.app, queue),
        resources=resources_or_default(queue.workers.resources, DEFAULT_WORKER_RESOURCES),
    )
    template = celery_pod_template(
        spec,
        owner=owner,
        component=naming.WORKER,
        queue=queue.name,
        containers=[container],
        termination_grace_period_seconds=queue.workers.termination_grace_period_seconds,
    )
    # Ready = consuming: the kubelet counts the pod Ready only once the operator has seen its worker
    # heartbeat (workerhealth.py), so rollouts and availability count workers that take tasks.
    template["spec"]["readinessGates"] = [{"conditionType": naming.CONDITION_CONSUMING}]
    # The pause container is PID 1 then, not Celery: the kernel drops a SIGTERM sent to a namespace's
    # PID 1 that has no handler yet, so a worker scaled away while it starts (the ReplicaSet removes
    # unready pods first) would ignore it, start consuming, and be killed mid-task at the end of its
    # grace period. As any other PID, it stops at once before Celery's handlers exist (it has taken
    # no task yet) and shuts down warm after.
    template["spec"]["shareProcessNamespace"] = True
    return deployment(
        owner,
        name=naming.worker_name(owner.name, queue.name),
        component=naming.WORKER,
        queue=queue.name,
        template=template,
        replicas=None if queue.autoscaled else queue.replicas,
    )


def build_worker_deployments(owner: ObjectIdentity, spec: TaskQueueSpec) -> list[Manifest]:
    return [build_worker_deployment(owner, spec, queue) for queue in spec.queues]
