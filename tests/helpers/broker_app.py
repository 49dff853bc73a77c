"""A tiny Celery app for the broker tests: tasks a test can hold and release at will.

Workers run it as `celery -A tests.helpers.broker_app worker ...` from the repository root; the
broker comes from CELERY_BROKER_URL (set by the test). `hold` writes `<gate>/started-<task id>`
with the worker's node name when it starts, then waits until `<gate>/release` exists.
"""

from __future__ import annotations

import time
from pathlib import Path

from celery import Celery

app = Celery("broker_app")
app.conf.update(
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    task_ignore_result=True,
)

HOLD = "broker_app.hold"
MAX_HOLD_SECONDS = 300.0  # a forgotten gate never keeps a worker forever


@app.task(name=HOLD, bind=True)
def hold(self, gate: str) -> str:
    directory = Path(gate)
    started = directory / f"started-{self.request.id}"
    started.with_suffix(".tmp").write_text(self.request.hostname or "")
    started.with_suffix(".tmp").rename(started)
    deadline = time.monotonic() + MAX_HOLD_SECONDS
    while not (directory / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return self.request.hostname or ""
