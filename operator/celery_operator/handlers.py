"""Every kopf registration, and nothing else: each one is a line into reconcile (or scaling).

Children are observed through kopf indexes (one watch per kind, labelled managed-by us), so a
settled TaskQueue is reconciled from memory without reading the API.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from . import autoscaler, metrics, naming, periodicjobs, reconcile, rediscovery
from .kube import controller_uid
from .settings import configure, load  # noqa: F401  (registers the startup hook)

_OURS = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
_TASKQUEUES = (naming.GROUP, naming.VERSION, naming.TASKQUEUE_PLURAL)
_PERIODICJOBS = (naming.GROUP, naming.VERSION, naming.PERIODICJOB_PLURAL)


@kopf.on.startup()
async def start_rediscovery(memo: kopf.Memo, settings: kopf.OperatorSettings, **_: Any) -> None:
    rediscovery.start(memo, settings, kopf.get_default_registry())


@kopf.on.cleanup()
async def stop_rediscovery(memo: kopf.Memo, **_: Any) -> None:
    rediscovery.stop(memo)


def _by_owner(body: kopf.Body) -> dict[str, dict[str, Any]] | None:
    owner = controller_uid(body)
    return {owner: dict(body)} if owner else None


@kopf.index("apps", "v1", "deployments", labels=_OURS)
def owned_deployments(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]] | None:
    return _by_owner(body)


@kopf.index("v1", "services", labels=_OURS)
def owned_services(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]] | None:
    return _by_owner(body)


@kopf.index("v1", "secrets", labels=_OURS)
def owned_secrets(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]] | None:
    return _by_owner(body)


@kopf.index("v1", "persistentvolumeclaims", labels=_OURS)
def owned_volume_claims(body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]] | None:
    return _by_owner(body)


@kopf.index("v1", "pods", labels={**_OURS, naming.LABEL_COMPONENT: naming.WORKER})
def worker_pods(body: kopf.Body, namespace: str, name: str, labels: kopf.Labels, annotations: kopf.Annotations,
                **_: Any) -> dict[tuple[str, str, str], autoscaler.WorkerPod] | None:
    if body.metadata.get("deletionTimestamp"):
        return None  # already leaving: not a candidate for anything
    key = (namespace, labels.get(naming.LABEL_INSTANCE, ""), labels.get(naming.LABEL_QUEUE, ""))
    return {key: autoscaler.WorkerPod(name=name, annotations=dict(annotations))}


@kopf.index(*_PERIODICJOBS)
def periodicjobs_by_taskqueue(body: kopf.Body, namespace: str, spec: kopf.Spec,
                              **_: Any) -> dict[tuple[str, str], dict[str, Any]] | None:
    """PeriodicJobs by (namespace, spec.taskQueueRef.name); one being deleted no longer counts."""
    reference = (spec.get("taskQueueRef") or {}).get("name")
    if not reference or body.metadata.get("deletionTimestamp"):
        return None
    return {(namespace, reference): dict(body)}


@kopf.index(*_TASKQUEUES)
def taskqueues_by_name(body: kopf.Body, namespace: str, name: str,
                       **_: Any) -> dict[tuple[str, str], dict[str, Any]] | None:
    if body.metadata.get("deletionTimestamp"):
        return None
    return {(namespace, name): dict(body)}


def _children(uid: str, *indexes: kopf.Index) -> list[dict[str, Any]]:
    return [item for index in indexes for item in index.get(uid, [])]


# a failed pass is retried after one resync period, not kopf's default minute
_RETRY = load().resync_seconds


@kopf.on.resume(*_TASKQUEUES, backoff=_RETRY)
@kopf.on.create(*_TASKQUEUES, backoff=_RETRY)
@kopf.on.update(*_TASKQUEUES, backoff=_RETRY)
@kopf.timer(*_TASKQUEUES, interval=_RETRY, initial_delay=_RETRY, backoff=_RETRY)
def reconcile_taskqueue(body: kopf.Body, uid: str, name: str, namespace: str, memo: kopf.Memo,
                        owned_deployments: kopf.Index, owned_services: kopf.Index, owned_secrets: kopf.Index,
                        owned_volume_claims: kopf.Index, periodicjobs_by_taskqueue: kopf.Index, **_: Any) -> None:
    children = _children(uid, owned_deployments, owned_services, owned_secrets, owned_volume_claims)
    referring = list(periodicjobs_by_taskqueue.get((namespace, name), []))
    reconcile.reconcile_taskqueue(memo.runtime, body, children, referring)


@kopf.daemon(*_TASKQUEUES, cancellation_timeout=10)
async def autoscale_taskqueue(stopped: kopf.DaemonStopped, body: kopf.Body, uid: str, name: str, namespace: str,
                              memo: kopf.Memo, logger: logging.Logger, owned_deployments: kopf.Index,
                              owned_secrets: kopf.Index, worker_pods: kopf.Index, **_: Any) -> None:
    """Measure every queue and scale the autoscaled ones, every spec.autoscaling.pollIntervalSeconds, and
    at once when a queue at zero workers gets a message."""
    runtime = memo.runtime
    loop = asyncio.get_running_loop()

    def pods_of(queue_dns: str) -> list[autoscaler.WorkerPod]:
        return list(worker_pods.get((namespace, name, queue_dns), []))

    woken = runtime.wakeups.register(uid)
    try:
        while not stopped:
            woken.clear()
            ticked_at = loop.time()
            children = _children(uid, owned_deployments, owned_secrets)
            settled = True
            try:
                settled = await loop.run_in_executor(runtime.scaler_pool, autoscaler.tick, runtime, body, children,
                                                     pods_of)
            except Exception:  # the next tick is the retry; the loop must outlive one bad tick
                logger.exception("scaler tick failed")
            await autoscaler.sleep_until_next_tick(stopped, woken, autoscaler.next_tick_in(body, settled), ticked_at)
    finally:
        runtime.wakeups.forget(uid)
        await asyncio.to_thread(runtime.brokers.release, uid)


@kopf.on.delete(*_TASKQUEUES, optional=True)
def forget_taskqueue(body: kopf.Body, uid: str, name: str, namespace: str, memo: kopf.Memo,
                     owned_secrets: kopf.Index, **_: Any) -> None:
    periodicjobs.forget_taskqueue_schedule(memo.runtime, body, _children(uid, owned_secrets))
    memo.runtime.forget(uid)
    metrics.forget_taskqueue(namespace, name)


@kopf.on.resume(*_PERIODICJOBS, backoff=_RETRY)
@kopf.on.create(*_PERIODICJOBS, backoff=_RETRY)
@kopf.on.update(*_PERIODICJOBS, backoff=_RETRY)
@kopf.timer(*_PERIODICJOBS, interval=_RETRY, initial_delay=_RETRY, backoff=_RETRY)
def reconcile_periodicjob(body: kopf.Body, spec: kopf.Spec, namespace: str, memo: kopf.Memo,
                          taskqueues_by_name: kopf.Index, owned_secrets: kopf.Index, owned_deployments: kopf.Index,
                          old: dict[str, Any] | None = None, **_: Any) -> None:
    taskqueue, children = periodicjobs.taskqueue_of(spec, namespace, taskqueues_by_name, owned_secrets,
                                                    owned_deployments)
    moved_from = periodicjobs.taskqueue_left(spec, (old or {}).get("spec"), namespace, taskqueues_by_name,
                                             owned_secrets)
    periodicjobs.reconcile_periodicjob(memo.runtime, body, taskqueue, children, moved_from=moved_from)


@kopf.on.delete(*_PERIODICJOBS, optional=True)
def forget_periodicjob(body: kopf.Body, spec: kopf.Spec, namespace: str, memo: kopf.Memo,
                       taskqueues_by_name: kopf.Index, owned_secrets: kopf.Index, **_: Any) -> None:
    taskqueue, children = periodicjobs.taskqueue_of(spec, namespace, taskqueues_by_name, owned_secrets)
    periodicjobs.forget_periodicjob(memo.runtime, body, taskqueue, children)
