"""Which failures of a scaler tick are logged as one line (the next tick retries them) and which with
their traceback (a bug)."""

from __future__ import annotations

import pytest

from celery_operator.kube import KubeError
from celery_operator.scaler import transient_failure

pytestmark = pytest.mark.unit


def test_an_unreachable_or_refusing_api_server_is_one_line() -> None:
    assert transient_failure(KubeError(0, "Unreachable", "connection refused")) == "0 Unreachable: connection refused"
    assert "Forbidden" in (transient_failure(KubeError(403, "Forbidden", "namespace is terminating")) or "")


def test_anything_else_keeps_its_traceback() -> None:
    assert transient_failure(KeyError("status")) is None
    assert transient_failure(TypeError("unexpected")) is None


def test_an_outage_is_logged_once_and_a_bug_every_time(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from celery_operator.scaler import TickFailures

    log, failures = logging.getLogger("tick-test"), TickFailures()
    with caplog.at_level(logging.WARNING, logger="tick-test"):
        for _ in range(3):
            failures.failed(KubeError(0, "Unreachable", "connection refused"), log)
        failures.succeeded()
        failures.failed(KubeError(0, "Unreachable", "connection refused"), log)
        failures.failed(KeyError("status"), log)
        failures.failed(KeyError("status"), log)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(warnings) == 2, "once per outage"
    assert len(errors) == 2 and all(r.exc_info for r in errors), "a bug every time, with its traceback"
