"""The composition root: the one place the operator is put together.

`install` registers the handlers (handlers.py) and the two hooks of this module with kopf: at
startup, configure kopf, build the Runtime over the real ports (kube.Kube, the broker registry, the
beat-state store), serve metrics and begin the CRD rediscovery; at cleanup, undo all of it.
`python -m celery_operator` and `kopf run -m celery_operator` both install the handlers with
`install_default` (the package imports it), with the settings read once from the environment.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import kopf

from . import handlers, metrics, naming, rediscovery
from .beat.state import BeatStateStore
from .broker.registry import BrokerRegistry
from .kube import Kube
from .runtime import Runtime, Wakeups
from .settings import Settings

_installed: Settings | None = None


def install(registry: kopf.OperatorRegistry, settings: Settings) -> None:
    handlers.register(registry, settings)
    kopf.on.startup(registry=registry)(functools.partial(start, settings, registry))
    kopf.on.cleanup(registry=registry)(stop)


def install_default() -> Settings:
    """Install into kopf's default registry, once per process; the settings it was installed with."""
    global _installed
    if _installed is None:
        _installed = Settings.from_environment()
        install(kopf.get_default_registry(), _installed)
    return _installed


def create_runtime(settings: Settings, write_guard: Callable[[], None] | None = None) -> Runtime:
    """`write_guard`: the leader election's check before every write (None: no election)."""
    wakeups = Wakeups()
    return Runtime(
        settings=settings,
        kube=Kube.from_environment(settings.api_timeout_seconds, write_guard),
        brokers=BrokerRegistry(settings.broker_timeout_seconds, on_arrival=wakeups.wake),
        beat_state=BeatStateStore(settings.broker_timeout_seconds),
        wakeups=wakeups,
    )


def configure_kopf(kopf_settings: kopf.OperatorSettings) -> None:
    # kopf would post an Event for every handler run; we post our own, on state changes only
    kopf_settings.posting.enabled = False
    # kopf's bookkeeping on our objects, under our own prefix
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=naming.GROUP, key="last-handled-configuration")
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=naming.GROUP)
    kopf_settings.persistence.finalizer = f"{naming.GROUP}/finalizer"
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330
    kopf_settings.execution.max_workers = 16


async def start(ours: Settings, registry: kopf.OperatorRegistry, settings: kopf.OperatorSettings, memo: kopf.Memo,
                logger: logging.Logger, **_: Any) -> None:
    """kopf's startup hook (`settings` is kopf's own, by kopf's name for it)."""
    logging.getLogger("celery_operator").setLevel(ours.log_level.upper())
    configure_kopf(settings)
    memo.runtime = create_runtime(ours, memo.get("write_guard"))
    metrics.serve(ours.metrics_port, ours.metrics_address)
    metrics.LEADER.set(1)  # kopf starts its handlers: this process acts
    rediscovery.start(memo, settings, registry)
    logger.info("celery-operator configured: %s", ours)


async def stop(memo: kopf.Memo, **_: Any) -> None:
    """kopf's cleanup hook."""
    rediscovery.stop(memo)
    runtime = getattr(memo, "runtime", None)
    if runtime is not None:
        runtime.close()
