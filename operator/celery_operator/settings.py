"""The operator's settings, read from CELERY_OPERATOR_* environment variables. Nothing else."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

from . import naming

ENV_PREFIX: Final = "CELERY_OPERATOR_"


@dataclass(frozen=True)
class Settings:
    """Every knob, with its environment variable: CELERY_OPERATOR_<FIELD NAME IN UPPER CASE>."""

    # how often each TaskQueue and PeriodicJob is reconciled with nothing changed (drift, readiness,
    # broker health); a failed pass is retried after the same period
    resync_seconds: float = 10.0
    # the longest a single broker or API request may take
    broker_timeout_seconds: float = 2.0
    api_timeout_seconds: float = 10.0
    # server-side apply field managers: the reconciler's and the scaler's (replicas of autoscaled workers)
    field_manager: str = naming.FIELD_MANAGER
    scaler_field_manager: str = f"{naming.FIELD_MANAGER}-scaler"
    # the images the operator runs when a TaskQueue names none: every beat pod (`python -m
    # celery_operator.beat`, the operator's own image), the managed Redis (and the beat-state
    # Redis of AMQP brokers), Flower; a TaskQueue's spec.broker.managed.image and spec.flower.image win
    beat_image: str = "ghcr.io/celery-operator/celery-operator:0.1.0"
    redis_image: str = "redis:7.4-alpine"
    flower_image: str = "mher/flower:2.0"
    # the Prometheus /metrics port (0 = off) and the address it listens on
    metrics_port: int = 0
    metrics_address: str = "0.0.0.0"
    log_level: str = "INFO"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
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
