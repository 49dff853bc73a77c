"""Crash-loop back-off: immediate first restart, then 10 s doubling to 5 min, counted from exit."""

from __future__ import annotations

import pytest

from devcluster.agent.backoff import (
    Backoff,
    after_restart,
    backoff_message,
    restart_delay,
)

pytestmark = pytest.mark.unit


def test_first_exit_restarts_at_once_and_arms_ten_seconds() -> None:
    assert restart_delay(None, finished_at=100.0, now=100.0) == 0.0
    assert after_restart(None, finished_at=100.0, now=100.0) == Backoff(seconds=10.0, armed_at=100.0)


def test_back_off_doubles_up_to_five_minutes() -> None:
    entry, now, waits = None, 0.0, []
    for _ in range(8):
        finished = now + 1.0  # each run crashes after a second
        wait = restart_delay(entry, finished, finished)
        waits.append(wait)
        now = finished + wait
        entry = after_restart(entry, finished, now)
    assert waits == [0.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0]


def test_wait_is_counted_from_the_exit_not_from_now() -> None:
    entry = Backoff(seconds=40.0, armed_at=0.0)
    assert restart_delay(entry, finished_at=5.0, now=30.0) == 15.0
    assert restart_delay(entry, finished_at=5.0, now=45.0) == 0.0
    # however long the container ran (short of the reset), the wait starts at its exit and doubles
    assert restart_delay(entry, finished_at=500.0, now=500.0) == 40.0
    assert after_restart(entry, finished_at=500.0, now=540.0).seconds == 80.0


def test_a_long_good_run_resets_the_sequence() -> None:
    entry = Backoff(seconds=300.0, armed_at=0.0)
    assert restart_delay(entry, finished_at=601.0, now=601.0) == 0.0
    assert after_restart(entry, finished_at=601.0, now=601.0).seconds == 10.0


def test_message_is_the_kubelets() -> None:
    assert backoff_message(20, "worker", "web-1", "shop", "u-1") == (
        "back-off 20s restarting failed container=worker pod=web-1_shop(u-1)")
    assert backoff_message(300, "w", "p", "n", "u").startswith("back-off 5m0s ")
