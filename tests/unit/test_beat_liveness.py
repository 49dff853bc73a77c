"""The beat's liveness, without a cluster: the probe the builder gives the operator's own beat (and
not a custom scheduler), the rule that tells a wedged loop from a waiting or failing one, and the
BeatUp series that follows BeatReady."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from prometheus_client import REGISTRY

from celery_operator import builders, reconcile
from celery_operator.beat.health import ALLOWANCE_SECONDS, HEALTH_PATH, Liveness
from celery_operator.builders.beat import BEAT_HEALTH_PATH, BEAT_HEALTH_PORT, BeatOptions, build_beat
from celery_operator.conditions import Condition
from celery_operator.models import ObjectIdentity, parse_taskqueue_spec

pytestmark = pytest.mark.unit

OWNER = ObjectIdentity(name="shop", namespace="prod", uid="11111111-2222-3333-4444-555555555555", generation=3)
SPEC = {"image": "ghcr.io/acme/shop:1.4.2", "app": "myproject", "queues": [{"name": "jobs"}],
        "broker": {"url": "redis://redis.shared:6379/0"}}
IMAGES = builders.DefaultImages(beat="registry.example.com/celery-operator:9.9", redis="redis:7.4-alpine",
                                flower="mher/flower:2.0")


def beat_container(custom: bool, **spec: Any) -> dict[str, Any]:
    body = {**copy.deepcopy(SPEC), **spec}
    (deployment,) = build_beat(OWNER, parse_taskqueue_spec(body), BeatOptions(custom=custom), IMAGES)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


# --- the probe -------------------------------------------------------------------------------------

def test_the_operators_beat_serves_healthz_on_a_named_port_and_is_probed_there() -> None:
    container = beat_container(custom=False)
    assert container["command"] == ["python", "-m", "celery_operator.beat"], "the entry point is unchanged"
    assert container["args"] == ["--health-port", str(BEAT_HEALTH_PORT)]
    assert container["ports"] == [{"name": "health", "containerPort": 8081, "protocol": "TCP"}]
    probe = container["livenessProbe"]
    assert probe["httpGet"] == {"path": "/healthz", "port": "health"}
    assert BEAT_HEALTH_PATH == HEALTH_PATH, "the builder probes the path the beat serves"
    assert (probe["periodSeconds"], probe["timeoutSeconds"], probe["failureThreshold"]) == (5, 2, 3)
    worst_detection = probe["periodSeconds"] * probe["failureThreshold"] + probe["timeoutSeconds"]
    assert worst_detection + probe["terminationGracePeriodSeconds"] <= 25, "a frozen beat goes within ~20 s"
    assert "exec" not in probe and "readinessProbe" not in container, "no process spawned, no readiness gate"


def test_a_slow_start_is_not_taken_for_a_wedged_beat() -> None:
    """Liveness counts only once the startup probe passed: a beat whose Python takes 20 s to start on
    a loaded node is not restarted before it ever served /healthz."""
    startup = beat_container(custom=False)["startupProbe"]
    assert startup["httpGet"] == {"path": "/healthz", "port": "health"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60


def test_the_probe_keeps_the_beats_restricted_pod() -> None:
    (deployment,) = build_beat(OWNER, parse_taskqueue_spec(copy.deepcopy(SPEC)), BeatOptions(custom=False), IMAGES)
    pod_spec = deployment["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "readOnlyRootFilesystem": True}
    assert pod_spec["terminationGracePeriodSeconds"] == 30, "a normal stop still gets the pod's grace"


def test_a_custom_scheduler_gets_no_probe_and_no_port() -> None:
    container = beat_container(custom=True, beat={"scheduler": "django_celery_beat.schedulers:DatabaseScheduler"})
    assert container["command"][:4] == ["celery", "-A", "myproject", "beat"]
    assert "livenessProbe" not in container and "ports" not in container and "args" not in container
    assert "startupProbe" not in container


# --- wedged, waiting or failing --------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_loop_is_live_while_it_reports_and_wedged_once_overdue_by_the_allowance() -> None:
    clock = Clock()
    liveness = Liveness(clock=clock)
    assert liveness.health().live, "a beat just started"
    clock.now += ALLOWANCE_SECONDS
    assert liveness.health().live
    clock.now += 0.5
    health = liveness.health()
    assert not health.live and "10.5 s overdue" in health.reason, "its first round never finished"
    liveness.progressed()
    assert liveness.health().live, "a send or a round done: back to live"


def test_a_long_wait_is_not_wedged_only_overrunning_it_is() -> None:
    """The backoff after failed rounds (up to 5 s) counts as promised time, not as lateness."""
    clock = Clock()
    liveness = Liveness(allowance=2.0, clock=clock)
    liveness.progressed(back_within=5.0)
    clock.now += 6.9
    assert liveness.health().live, "5 s of backoff and 1.9 s of a failing round"
    clock.now += 0.2
    assert not liveness.health().live


# --- BeatUp --------------------------------------------------------------------------------------

def beat_up() -> float | None:
    return REGISTRY.get_sample_value("celery_operator_beat_up", {"namespace": "prod", "taskqueue": "shop"})


def verdict(beat: Condition | None, blocked: reconcile.Blocked | None = None) -> reconcile.Verdict:
    return reconcile.Verdict(broker=None, workers=None, blocked=blocked, beat=beat)


def test_beat_up_follows_beat_ready_and_goes_with_it() -> None:
    reconcile.record_beat_up(OWNER, verdict(None))
    assert beat_up() is None, "no PeriodicJob refers: no series"
    reconcile.record_beat_up(OWNER, verdict(Condition.true("BeatReady", "BeatRunning", "sends")))
    assert beat_up() == 1
    reconcile.record_beat_up(OWNER, verdict(Condition.false("BeatReady", "BeatNotRunning", "expired")))
    assert beat_up() == 0
    reconcile.record_beat_up(OWNER, verdict(None, reconcile.Blocked("NameConflict", "not ours")))
    assert beat_up() == 0, "a blocked pass restates BeatReady, and the series with it"
    reconcile.record_beat_up(OWNER, verdict(None))
    assert beat_up() is None
    reconcile.record_beat_up(OWNER, verdict(None))
    assert beat_up() is None, "removing an absent series is fine"
