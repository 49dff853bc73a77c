"""Probe thresholds, as the kubelet counts them."""

from __future__ import annotations

import pytest

from devcluster.agent.probes import ProbeSettings, ProbeTracker

pytestmark = pytest.mark.unit


def settings(**overrides) -> ProbeSettings:
    return ProbeSettings.from_spec({"exec": {"command": ["true"]}, **overrides})


def test_defaults_are_the_kubelets() -> None:
    assert settings() == ProbeSettings(initial_delay=0.0, period=10.0, timeout=1.0, success_threshold=1,
                                       failure_threshold=3, termination_grace=None)


def test_readiness_needs_consecutive_successes_and_failures() -> None:
    tracker = ProbeTracker(settings(successThreshold=2, failureThreshold=2), initial=False)
    assert not tracker.record(True)
    assert not tracker.record(False)
    assert not tracker.record(True)
    assert tracker.record(True) and tracker.result is True
    assert not tracker.record(False)
    assert tracker.record(False) and tracker.result is False


def test_liveness_starts_healthy_and_fails_after_the_threshold() -> None:
    tracker = ProbeTracker(settings(failureThreshold=3), initial=True)
    assert [tracker.record(False) for _ in range(3)] == [False, False, True]
    assert tracker.result is False


def test_startup_is_unknown_until_a_success() -> None:
    tracker = ProbeTracker(settings(), initial=None)
    assert tracker.result is None
    assert tracker.record(True) and tracker.result is True
