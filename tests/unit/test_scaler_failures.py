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
