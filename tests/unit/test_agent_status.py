"""Pod status building: phase rules, conditions, container statuses."""

from __future__ import annotations

import pytest

from devcluster.agent.status import (
    ContainerView,
    PodFacts,
    Running,
    Terminated,
    Waiting,
    already_reported,
    container_status,
    image_id,
    merge_conditions,
    normalized_image,
    pod_conditions,
    pod_phase,
    pod_status,
    state_from_api,
    timestamp,
)

pytestmark = pytest.mark.unit

RUNNING = Running(started_at=0.0)


def view(name: str = "c", state=RUNNING, last=None, ready: bool = False, **extra) -> ContainerView:
    return ContainerView(name=name, image="python:3.12", state=state, last_state=last, ready=ready,
                         started=isinstance(state, Running), **extra)


def done(code: int) -> Terminated:
    return Terminated(exit_code=code, reason="Completed" if code == 0 else "Error", started_at=0.0, finished_at=1.0)


@pytest.mark.parametrize(
    ("policy", "views", "terminal", "phase"),
    [
        ("Always", [view(state=Waiting("ContainerCreating"))], False, "Pending"),
        ("Always", [view(), view("d", state=Waiting("ContainerCreating"))], False, "Pending"),
        ("Always", [view()], False, "Running"),
        ("Always", [view(state=Waiting("CrashLoopBackOff"), last=done(1))], False, "Running"),
        ("Always", [view(state=done(0))], False, "Running"),
        ("OnFailure", [view(state=done(0))], False, "Succeeded"),
        ("OnFailure", [view(state=done(0)), view("d", state=done(2))], False, "Running"),
        ("Never", [view(state=done(0)), view("d", state=done(2))], False, "Failed"),
        ("Never", [view(state=done(0)), view("d")], False, "Running"),
        ("Always", [view(state=done(0))], True, "Succeeded"),
        ("Always", [view(state=done(143))], True, "Failed"),
    ],
)
def test_phase_rules(policy: str, views: list, terminal: bool, phase: str) -> None:
    assert pod_phase(policy, [], views, terminal=terminal, initialized_before=False) == phase


def test_init_containers_keep_the_pod_pending_and_a_failed_one_fails_a_never_pod() -> None:
    regular = [view(state=Waiting("PodInitializing"))]
    assert pod_phase("Always", [view("init")], regular, False, False) == "Pending"
    assert pod_phase("Always", [view("init", state=Waiting("CrashLoopBackOff"), last=done(1))], regular,
                     False, False) == "Pending"
    assert pod_phase("Never", [view("init", state=done(1))], regular, False, False) == "Failed"
    assert pod_phase("Always", [view("init", state=done(0))], [view()], False, False) == "Running"


def test_conditions_name_the_unready_containers() -> None:
    conditions = pod_conditions("Running", True, [], [view("a", ready=True), view("b"), view("c")])
    by_type = {c["type"]: c for c in conditions}
    assert [c["type"] for c in conditions] == ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"]
    assert by_type["Initialized"]["status"] == "True"
    assert by_type["Ready"] == {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                                "message": "containers with unready status: [b c]"}
    assert by_type["ContainersReady"]["status"] == "False"


def test_ready_conditions_clear_reason_and_message_so_a_merge_patch_removes_them() -> None:
    conditions = pod_conditions("Running", True, [], [view("a", ready=True)])
    ready = next(c for c in conditions if c["type"] == "Ready")
    assert ready == {"type": "Ready", "status": "True", "reason": None, "message": None}


def test_incomplete_init_and_terminal_phases() -> None:
    conditions = pod_conditions("Pending", True, [view("setup")], [view(state=Waiting("PodInitializing"))])
    initialized = next(c for c in conditions if c["type"] == "Initialized")
    assert initialized["message"] == "containers with incomplete status: [setup]"
    succeeded = pod_conditions("Succeeded", False, [], [view(state=done(0))])
    assert next(c for c in succeeded if c["type"] == "Ready")["reason"] == "PodCompleted"
    assert next(c for c in succeeded if c["type"] == "PodReadyToStartContainers")["status"] == "False"


def test_readiness_gates_hold_ready_back() -> None:
    views = [view(ready=True)]
    missing = pod_conditions("Running", True, [], views, readiness_gates=["example.com/lb"])
    assert next(c for c in missing if c["type"] == "Ready")["reason"] == "ReadinessGatesNotReady"
    assert next(c for c in missing if c["type"] == "ContainersReady")["status"] == "True"
    present = pod_conditions("Running", True, [], views, readiness_gates=["example.com/lb"],
                             existing=[{"type": "example.com/lb", "status": "True"}])
    assert next(c for c in present if c["type"] == "Ready")["status"] == "True"


def test_transition_time_changes_only_on_a_flip() -> None:
    first = merge_conditions([], [{"type": "Ready", "status": "False"}], now=100.0)
    assert first[0]["lastTransitionTime"] == timestamp(100.0)
    same = merge_conditions(first, [{"type": "Ready", "status": "False", "reason": "X"}], now=200.0)
    assert same[0]["lastTransitionTime"] == timestamp(100.0)
    flipped = merge_conditions(same, [{"type": "Ready", "status": "True"}], now=300.0)
    assert flipped[0]["lastTransitionTime"] == timestamp(300.0)


def test_container_status_shapes() -> None:
    crashed = Terminated(exit_code=137, reason="Error", started_at=10.0, finished_at=20.0, signal=9,
                         container_id="devcluster://abc")
    status = container_status(ContainerView(name="w", image="python:3.12", restart_count=2, container_id="x",
                                            state=Waiting("CrashLoopBackOff", "back-off 20s"), last_state=crashed))
    assert status["state"] == {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}}
    assert status["lastState"]["terminated"] == {
        "exitCode": 137, "reason": "Error", "startedAt": timestamp(10.0), "finishedAt": timestamp(20.0),
        "containerID": "devcluster://abc", "signal": 9}
    assert status["restartCount"] == 2 and status["ready"] is False and status["started"] is False
    assert "containerID" not in status
    running = container_status(ContainerView(name="w", image="python:3.12", state=Running(5.0), ready=True,
                                             started=True, container_id="devcluster://def"))
    assert running["containerID"] == "devcluster://def"
    assert running["state"] == {"running": {"startedAt": timestamp(5.0)}}
    assert running["lastState"] == {}


def test_status_round_trips_through_the_api_form() -> None:
    terminated = Terminated(exit_code=1, reason="Error", started_at=10.0, finished_at=20.0, container_id="c")
    assert state_from_api(container_status(view(state=terminated))["state"]) == terminated
    assert state_from_api({"running": {"startedAt": timestamp(7.0)}}) == Running(7.0)
    assert state_from_api({"waiting": {"reason": "CrashLoopBackOff"}}) == Waiting("CrashLoopBackOff")
    assert state_from_api({}) is None


@pytest.mark.parametrize(
    ("image", "normalized"),
    [
        ("python", "docker.io/library/python:latest"),
        ("python:3.12", "docker.io/library/python:3.12"),
        ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
        ("ghcr.io/org/app", "ghcr.io/org/app:latest"),
        ("localhost:5000/app:1", "localhost:5000/app:1"),
        ("redis@sha256:abc", "docker.io/library/redis@sha256:abc"),
    ],
)
def test_images_are_reported_normalized(image: str, normalized: str) -> None:
    assert normalized_image(image) == normalized
    assert "@sha256:" in image_id(image)


FACTS = PodFacts(restart_policy="Always", host_ip="127.150.0.1", pod_ip="127.150.0.2", start_time=100.0,
                 generation=3)


def test_pod_status_carries_addresses_generation_and_keeps_terminal_phases() -> None:
    status = pod_status(FACTS, [], [view(ready=True)], terminal=False, api_status={}, previous_conditions=[],
                        now=200.0)
    assert status["phase"] == "Running" and status["observedGeneration"] == 3
    assert status["podIPs"] == [{"ip": "127.150.0.2"}] and status["hostIP"] == "127.150.0.1"
    assert status["startTime"] == timestamp(100.0)
    assert all(c["observedGeneration"] == 3 for c in status["conditions"])
    assert "initContainerStatuses" not in status
    after_success = pod_status(FACTS, [], [view()], terminal=False, api_status={"phase": "Succeeded"},
                               previous_conditions=[], now=200.0)
    assert after_success["phase"] == "Succeeded"


def test_a_status_the_api_already_holds_is_not_sent_again() -> None:
    status = pod_status(FACTS, [], [view(ready=True)], terminal=False, api_status={}, previous_conditions=[],
                        now=200.0)
    # the API drops null reason/message, adds lastProbeTime, PodScheduled and qosClass
    as_stored = [{key: value for key, value in c.items() if value is not None} | {"lastProbeTime": None}
                 for c in status["conditions"]]
    stored = dict(status, qosClass="BestEffort", conditions=[*as_stored, {"type": "PodScheduled", "status": "True"}])
    assert already_reported(status, stored)
    assert not already_reported(status, dict(stored, podIP="127.150.0.9"))
    flipped = dict(stored, conditions=[dict(c, status="False") if c["type"] == "Ready" else c
                                       for c in stored["conditions"]])
    assert not already_reported(status, flipped)
