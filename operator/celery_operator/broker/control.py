"""Asking workers directly: a Celery control app whose commands cannot retry forever, and
`busy_workers`, the inspect made right before a scale-down.

`inspect(destination=[...])` returns as soon as every named worker replied (kombu sets the reply
limit to the number of destinations), so `busy_workers` waits the timeout only for workers that do
not answer. kombu's pidbox publishes with `retry=True` and no limit; the app here publishes control
commands with a bounded policy, so a dead broker fails within about the timeout (Redis: at least
1.5 s, longer than kombu's 1 s BRPOP for replies).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Final

import kombu

from .connections import connected
from .urls import BrokerUnavailable

_NO_RETRY_POLICY: Final = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
_app_lock = threading.Lock()
_app: Any = None


class _BoundedProducer(kombu.Producer):
    """kombu's pidbox publishes with retry=True and no policy, which retries forever: bound it."""

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["retry_policy"] = _NO_RETRY_POLICY
        return super().publish(*args, **kwargs)


def celery_app() -> Any:
    """A bare Celery app for the event receiver and inspect. It is bound to no broker: every call
    passes its own connection, and control commands are published on that connection's channel
    (Celery's default would borrow a producer from the app's own pool, i.e. the app's broker)."""
    global _app
    with _app_lock:
        if _app is None:
            from celery import Celery
            from celery.app.control import Control
            from kombu.pidbox import Mailbox

            class BoundedMailbox(Mailbox):
                @contextmanager
                def producer_or_acquire(self, producer: Any = None, channel: Any = None) -> Iterator[Any]:
                    yield producer or _BoundedProducer(channel, auto_declare=False)

            class BoundedControl(Control):
                Mailbox = BoundedMailbox

            _app = Celery("celery-operator", set_as_current=False, control=BoundedControl)
        return _app


def busy_workers(
    url: str,
    worker_names: Collection[str],
    timeout: float = 1.0,
    *,
    unanswered_are_busy: bool = True,
    transport_options: Mapping[str, Any] | None = None,
) -> set[str]:
    """Which of `worker_names` (`<queue>@<pod>`) are executing a task now, asked with
    `inspect(destination=worker_names).active()`. It returns as soon as every named worker
    answered, else after `timeout`.

    A worker that does not answer cannot be shown idle: it may be a solo-pool worker inside a task
    (its only thread is busy), so by default it counts as busy. Pass `unanswered_are_busy=False`
    to get only the workers that said they are busy. Raises BrokerUnavailable.
    """
    names = sorted(set(worker_names))
    if not names:
        return set()
    try:
        with connected(url, timeout, transport_options) as connection:
            inspector = celery_app().control.inspect(destination=names, timeout=timeout, connection=connection)
            replies = inspector.active() or {}
    except Exception as error:  # noqa: BLE001 - connection, channel and socket errors alike
        raise BrokerUnavailable(url, "cannot inspect workers", error) from None
    busy = {name for name, tasks in replies.items() if name in names and tasks}
    if unanswered_are_busy:
        busy |= set(names) - set(replies)
    return busy
