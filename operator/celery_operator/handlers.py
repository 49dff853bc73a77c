"""Every kopf registration of our resources, and nothing else: each handler is a line into a
controller (reconcile, scaler, periodicjobs). `register` puts them in a kopf registry with the
resync period from the settings; the composition root (lifecycle.py) calls it.

Children are observed through kopf indexes (one watch per kind, labelled managed-by us), so a
settled TaskQueue is reconciled from memory without reading the API.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from . import metrics, naming, periodicjobs, reconcile, scaler, workerhealth
from .children import controller_uid
from .settings import Settings

OURS = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
TASKQUEUES = (naming.GROUP, naming.VERSION, naming.TASKQUEUE_PLURAL)
PERIODICJOBS = (naming.GROUP, naming.VERSION, naming.PERIODICJOB_PLURAL)


# --- indexes ----------------------------------------------------------------------------------------

def _by_owner(body: kopf.Body) -> dict[str, dict[str, Any]] | None:
    owner = controller_uid(body)
    return {owner: dict(body)} if owner else None


def owned_deployments(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]] | None:
    return _by_owner(body)


def owned_services(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]] | None:
    return _by_owner(body)


def owned_secrets(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]] | None:
    return _by_owner(body)


def owned_volume_claims(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]] | None:
    return _by_owner(body)


def owned_network_policies(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]] | None:
    return _by_owner(body)


def worker_pods(body: kopf.Body, namespace: str, labels: kopf.Labels,
                **_: Any) -> dict[tuple[str, str, str], workerhealth.WorkerPod] | None:
    if body.metadata.get("deletionTimestamp"):
        return None  # already leaving: not a candidate for anything
    key = (namespace, labels.get(naming.LABEL_INSTANCE, ""), labels.get(naming.LABEL_QUEUE, ""))
    return {key: workerhealth.worker_pod(body, naming.WORKER_CONTAINER)}


def periodicjobs_by_taskqueue(body: kopf.Body, namespace: str, spec: kopf.Spec,
                              **_: Any) -> dict[tuple[str, str], dict[str, Any]] | None:
    """PeriodicJobs by (namespace, spec.taskQueueRef.name); one being deleted no longer counts."""
    reference = (spec.get("taskQueueRef") or {}).get("name")
    if not reference or body.metadata.get("deletionTimestamp"):
        return None
    return {(namespace, reference): dict(body)}


def taskqueues_by_name(body: kopf.Body, namespace: str, name: str,
                       **_: Any) -> dict[tuple[str, str], dict[str, Any]] | None:
    if body.metadata.get("deletionTimestamp"):
        return None
    return {(namespace, name): dict(body)}


def _children(uid: str, *indexes: kopf.Index) -> list[dict[str, Any]]:
    return [item for index in indexes for item in index.get(uid, [])]


# --- TaskQueues -------------------------------------------------------------------------------------

def reconcile_taskqueue(body: kopf.Body, uid: str, name: str, namespace: str, memo: kopf.Memo,
                        owned_deployments: kopf.Index, owned_services: kopf.Index, owned_secrets: kopf.Index,
                        owned_volume_claims: kopf.Index, owned_network_policies: kopf.Index,
                        periodicjobs_by_taskqueue: kopf.Index, **_: Any) -> None:
    children = _children(uid, owned_deployments, owned_services, owned_secrets, owned_volume_claims,
                         owned_network_policies)
    referring = list(periodicjobs_by_taskqueue.get((namespace, name), []))
    reconcile.reconcile_taskqueue(memo.runtime, body, children, referring)


async def autoscale_taskqueue(stopped: kopf.DaemonStopped, body: kopf.Body, uid: str, name: str, namespace: str,
                              memo: kopf.Memo, logger: logging.Logger, owned_deployments: kopf.Index,
                              owned_secrets: kopf.Index, worker_pods: kopf.Index, **_: Any) -> None:
    """Measure every queue and scale the autoscaled ones, every spec.autoscaling.pollIntervalSeconds, and
    at once when a queue's backlog outgrows its workers (at zero: its first message)."""
    runtime = memo.runtime
    loop = asyncio.get_running_loop()

    def pods_of(queue_dns: str) -> list[workerhealth.WorkerPod]:
        return list(worker_pods.get((namespace, name, queue_dns), []))

    woken = runtime.wakeups.register(uid)
    failures = scaler.TickFailures()
    try:
        while not stopped:
            woken.clear()
            ticked_at = loop.time()
            children = _children(uid, owned_deployments, owned_secrets)
            settled = True
            try:
                settled = await loop.run_in_executor(runtime.scaler_pool, scaler.tick, runtime, body, children,
                                                     pods_of)
                failures.succeeded()
            except Exception as error:  # the next tick is the retry; the loop must outlive one bad tick
                failures.failed(error, logger)
            await scaler.sleep_until_next_tick(stopped, woken, scaler.next_tick_in(body, settled), ticked_at)
    finally:
        runtime.wakeups.forget(uid)
        await asyncio.to_thread(runtime.brokers.release, uid)


def forget_taskqueue(body: kopf.Body, uid: str, name: str, namespace: str, memo: kopf.Memo,
                     owned_secrets: kopf.Index, **_: Any) -> None:
    periodicjobs.forget_taskqueue(memo.runtime, body, _children(uid, owned_secrets))
    metrics.forget_taskqueue(namespace, name)


# --- PeriodicJobs -----------------------------------------------------------------------------------

def reconcile_periodicjob(body: kopf.Body, spec: kopf.Spec, namespace: str, memo: kopf.Memo,
                          taskqueues_by_name: kopf.Index, owned_secrets: kopf.Index, owned_deployments: kopf.Index,
                          old: dict[str, Any] | None = None, **_: Any) -> None:
    taskqueue, children = periodicjobs.taskqueue_of(spec, namespace, taskqueues_by_name, owned_secrets,
                                                    owned_deployments)
    moved_from = periodicjobs.taskqueue_left(spec, (old or {}).get("spec"), namespace, taskqueues_by_name,
                                             owned_secrets)
    periodicjobs.reconcile_periodicjob(memo.runtime, body, taskqueue, children, moved_from=moved_from)


def forget_periodicjob(body: kopf.Body, spec: kopf.Spec, namespace: str, memo: kopf.Memo,
                       taskqueues_by_name: kopf.Index, owned_secrets: kopf.Index, **_: Any) -> None:
    taskqueue, children = periodicjobs.taskqueue_of(spec, namespace, taskqueues_by_name, owned_secrets)
    periodicjobs.forget_periodicjob(memo.runtime, body, taskqueue, children)


# --- the registry -----------------------------------------------------------------------------------

def register(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    """Every handler above into `registry`. Reconciles are level-triggered: on resume, create and
    update, and on a timer every resync period, which is also the retry delay of a failed pass."""
    resync = settings.resync_seconds
    for index, resource, labels in (
        (owned_deployments, ("apps", "v1", "deployments"), OURS),
        (owned_services, ("v1", "services"), OURS),
        (owned_secrets, ("v1", "secrets"), OURS),
        (owned_volume_claims, ("v1", "persistentvolumeclaims"), OURS),
        (owned_network_policies, ("networking.k8s.io", "v1", "networkpolicies"), OURS),
        (worker_pods, ("v1", "pods"), {**OURS, naming.LABEL_COMPONENT: naming.WORKER}),
        (periodicjobs_by_taskqueue, PERIODICJOBS, None),
        (taskqueues_by_name, TASKQUEUES, None),
    ):
        kopf.index(*resource, labels=labels, registry=registry)(index)
    for kind, reconciler, forget in ((TASKQUEUES, reconcile_taskqueue, forget_taskqueue),
                                     (PERIODICJOBS, reconcile_periodicjob, forget_periodicjob)):
        for on_change in (kopf.on.resume, kopf.on.create, kopf.on.update):
            on_change(*kind, backoff=resync, registry=registry)(reconciler)
        kopf.timer(*kind, interval=resync, initial_delay=resync, backoff=resync, registry=registry)(reconciler)
        kopf.on.delete(*kind, optional=True, registry=registry)(forget)
    kopf.daemon(*TASKQUEUES, cancellation_timeout=10, registry=registry)(autoscale_taskqueue)
