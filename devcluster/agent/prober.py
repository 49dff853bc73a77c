"""The probe loops of a running container (startup, liveness, readiness), the kubelet's way:

- startup runs first; liveness and readiness wait until it succeeded (or there is none);
- each probe starts `initialDelaySeconds` after the container started, then every `periodSeconds`;
- a failed startup or liveness probe (past its threshold) restarts the container; readiness
  only flips `ready`; every failed probe is reported (event `Unhealthy`);
- liveness stops once the pod terminates, readiness goes on until the container stops.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from devcluster.agent.containers import ContainerRun
from devcluster.agent.probes import ExecContext, ProbeSettings, ProbeTracker, run_handler

PROBE_KEYS = (("Startup", "startupProbe"), ("Liveness", "livenessProbe"), ("Readiness", "readinessProbe"))
INITIAL_RESULT = {"Readiness": False, "Liveness": True, "Startup": None}


class ProbeHost(Protocol):
    """What a probe loop needs from the pod it belongs to."""

    def exec_context(self, run: ContainerRun) -> ExecContext: ...

    def probe_failed(self, run: ContainerRun, kind: str, message: str) -> None: ...

    def status_changed(self) -> None: ...

    def terminating(self) -> bool: ...

    def restart_unhealthy(self, run: ContainerRun, kind: str, grace: float | None) -> None: ...


def start_probes(run: ContainerRun, host: ProbeHost) -> None:
    """Start the container's probe loops; without a readiness probe it is ready once started."""
    if run.init and not run.restartable_init:
        return  # plain init containers are never probed
    if not run.spec.get("readinessProbe"):
        run.ready = run.started
    loop = asyncio.get_running_loop()
    for kind, key in PROBE_KEYS:
        if run.spec.get(key):
            run.probe_tasks.append(loop.create_task(probe_container(run, kind, run.spec[key], host)))


async def probe_container(run: ContainerRun, kind: str, spec: dict, host: ProbeHost) -> None:
    settings = ProbeSettings.from_spec(spec)
    initial = INITIAL_RESULT[kind]
    if kind == "Readiness" and run.ready:
        initial = True  # a container adopted after an agent restart keeps the readiness it had
    tracker = ProbeTracker(settings, initial)
    identity = run.identity
    if kind != "Startup":
        await run.started_event.wait()
    delay = run.started_at + settings.initial_delay - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    while run.identity == identity and run.running:
        if kind == "Liveness" and host.terminating():
            return
        outcome = await run_handler(spec, host.exec_context(run), settings.timeout)
        if run.identity != identity:
            return
        if not outcome.success:
            host.probe_failed(run, kind, outcome.message.strip())
        changed = tracker.record(outcome.success)
        if kind == "Readiness" and changed:
            run.ready = bool(tracker.result)
            host.status_changed()
        if kind == "Startup" and tracker.result is True:
            run.started = True
            run.started_event.set()
            if not run.spec.get("readinessProbe"):
                run.ready = True
            host.status_changed()
            return
        if kind in ("Liveness", "Startup") and tracker.result is False and not host.terminating():
            host.restart_unhealthy(run, kind, settings.termination_grace)
            return
        await asyncio.sleep(settings.period)
