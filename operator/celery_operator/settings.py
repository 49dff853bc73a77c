"""The operator's settings, read once from CELERY_OPERATOR_* environment variables, and the one
kopf startup hook that configures kopf and builds the runtime the handlers use."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import kopf

from . import metrics, naming

ENV_PREFIX = "CELERY_OPERATOR_"


@dataclass(frozen=True)
class OperatorSettings:
    """Every knob, with its environment variable: CELERY_OPERATOR_<FIELD NAME IN UPPER CASE>."""

    # how often each TaskQueue is reconciled with nothing changed (drift, readiness, broker health)
    resync_seconds: float = 10.0
    # the longest a single broker or API request may take
    broker_timeout_seconds: float = 2.0
    api_timeout_seconds: float = 10.0
    # server-side apply field managers: the reconciler's and the scaler's (replicas of autoscaled workers)
    field_manager: str = naming.FIELD_MANAGER
    scaler_field_manager: str = f"{naming.FIELD_MANAGER}-scaler"
    # the image of every TaskQueue's beat pod (`python -m celery_operator.beat`): the operator's own
    beat_image: str = "ghcr.io/celery-operator/celery-operator:0.1.0"
    # the Prometheus /metrics port (0 = off) and the address it listens on
    metrics_port: int = 0
    metrics_address: str = "0.0.0.0"
    log_level: str = "INFO"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "OperatorSettings":
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in fields(cls):
            raw = environ.get(ENV_PREFIX + item.name.upper())
            if raw is None or raw == "":
                continue
            values[item.name] = _convert(item.name, raw, type(getattr(cls, item.name)))
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("resync_seconds", "broker_timeout_seconds", "api_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{ENV_PREFIX}{name.upper()} must be > 0")


def _convert(name: str, raw: str, kind: type) -> Any:
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}") from None


@lru_cache(maxsize=1)
def load() -> OperatorSettings:
    return OperatorSettings.from_environment()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """The one configuration hook: kopf's behaviour and the runtime shared by all handlers."""
    from .runtime import Runtime  # the runtime opens API and broker clients: not at import time

    ours = load()
    logging.getLogger("celery_operator").setLevel(ours.log_level.upper())
    # kopf would post an Event for every handler run; we post our own, on state changes only
    settings.posting.enabled = False
    # kopf's bookkeeping on our objects, under our own prefix
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=naming.GROUP, key="last-handled-configuration")
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=naming.GROUP)
    settings.persistence.finalizer = f"{naming.GROUP}/finalizer"
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 16
    memo.runtime = Runtime.create(ours)
    metrics.serve(ours.metrics_port, ours.metrics_address)
    logger.info("celery-operator configured: %s", ours)


@kopf.on.cleanup()
def close_runtime(memo: kopf.Memo, **_: Any) -> None:
    runtime = getattr(memo, "runtime", None)
    if runtime is not None:
        runtime.close()
