"""Free ports for the servers tests start: parallel workers pick from disjoint slices."""

from __future__ import annotations

import pytest

from devcluster import ports

pytestmark = pytest.mark.unit


def test_parallel_workers_pick_ports_from_disjoint_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    slices = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        slices.append(ports._worker_slice(20000, 34999))
    assert slices == [(20000, 24999), (25000, 29999), (30000, 34999)]
    low = ports._ephemeral_range()[0]
    first, last = ports._worker_slice(max(1024, low - 15000), low - 1)  # gw2's third of the range
    assert last - first < 5000
    assert all(first <= ports.free_port() <= last for _ in range(50))


def test_a_process_outside_a_parallel_run_picks_from_the_whole_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    assert ports._worker_slice(20000, 34999) == (20000, 34999)
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
    assert ports._worker_slice(20000, 34999) == (20000, 34999)
