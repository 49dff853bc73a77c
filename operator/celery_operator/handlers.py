"""Every kopf registration, and nothing else: each one is a line into reconcile (or scaling).

Children are observed through kopf indexes (one watch per kind, labelled managed-by us), so a
settled TaskQueue is reconciled from memory without reading the API.
"""

from __future__ import annotations

from typing import Any

import kopf

from . import naming, reconcile
from .kube import controller_uid
from .settings import configure, load  # noqa: F401  (registers the startup hook)

_OURS = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
_TASKQUEUES = (naming.GROUP, naming.VERSION, naming.TASKQUEUE_PLURAL)


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


def _children(uid: str, *indexes: kopf.Index) -> list[dict[str, Any]]:
    return [item for index in indexes for item in index.get(uid, [])]


# a failed pass is retried after one resync period, not kopf's default minute
_RETRY = load().resync_seconds


@kopf.on.resume(*_TASKQUEUES, backoff=_RETRY)
@kopf.on.create(*_TASKQUEUES, backoff=_RETRY)
@kopf.on.update(*_TASKQUEUES, backoff=_RETRY)
@kopf.timer(*_TASKQUEUES, interval=_RETRY, initial_delay=_RETRY, backoff=_RETRY)
def reconcile_taskqueue(body: kopf.Body, uid: str, memo: kopf.Memo, owned_deployments: kopf.Index,
                        owned_services: kopf.Index, owned_secrets: kopf.Index,
                        owned_volume_claims: kopf.Index, **_: Any) -> None:
    children = _children(uid, owned_deployments, owned_services, owned_secrets, owned_volume_claims)
    reconcile.reconcile_taskqueue(memo.runtime, body, children)


@kopf.on.delete(*_TASKQUEUES, optional=True)
def forget_taskqueue(uid: str, memo: kopf.Memo, **_: Any) -> None:
    memo.runtime.forget(uid)
