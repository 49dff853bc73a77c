"""One container of a pod on this node: what the agent keeps about it (`ContainerRun`) and how
it learns that the container's main process ended.

Exits are noticed through a pidfd (readable once the process has exited, for a child of the
agent as for a process adopted from an earlier agent run), or by polling where pidfds are not
available. The exit code comes from waitpid for the agent's own children, and from the zombie's
/proc stat (field 52) for adopted ones; if even that is gone it is reported as unknown.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

from devcluster.agent import backoff, procs
from devcluster.agent.status import (
    REASON_CONTAINER_CREATING,
    REASON_CONTAINER_STATUS_UNKNOWN,
    ContainerState,
    ContainerView,
    Running,
    Terminated,
    Waiting,
    exit_code_of_wait_status,
    exit_reason,
)

POLL_SECONDS = 1.0


@dataclass
class ContainerRun:
    """A container of the pod: its spec, its current process if any, and what it went through."""

    spec: dict
    init: bool = False
    restartable_init: bool = False
    state: ContainerState = field(default_factory=lambda: Waiting(REASON_CONTAINER_CREATING))
    last_state: Terminated | None = None
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    container_id: str = ""
    process: subprocess.Popen | None = None
    identity: procs.ProcessIdentity | None = None
    started_at: float = 0.0
    backoff: backoff.Backoff | None = None
    backoff_reported_for: float | None = None
    retry_at: float | None = None  # monotonic: when a waiting container may be tried again
    env: dict[str, str] = field(default_factory=dict)
    probe_tasks: list[asyncio.Task] = field(default_factory=list)
    started_event: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    force_restart: bool = False  # liveness/startup failure: restart whatever the exit code
    watcher_fd: int | None = None
    poll_task: asyncio.Task | None = None

    @property
    def name(self) -> str:
        return self.spec["name"]

    @property
    def running(self) -> bool:
        return isinstance(self.state, Running)

    def view(self) -> ContainerView:
        return ContainerView(name=self.name, image=self.spec.get("image", ""), state=self.state,
                             last_state=self.last_state, restart_count=self.restart_count,
                             ready=self.ready and self.running, started=self.started and self.running,
                             container_id=self.container_id, restartable_init=self.restartable_init)

    def stop_probes(self) -> None:
        for task in self.probe_tasks:
            task.cancel()
        self.probe_tasks = []


ExitHandler = Callable[[ContainerRun, procs.ProcessIdentity, "int | None"], None]


def watch_exit(run: ContainerRun, on_exit: ExitHandler) -> None:
    """Call `on_exit(run, identity, wait status or None)` once the run's main process ends."""
    identity = run.identity
    if identity is None:
        return
    loop = asyncio.get_running_loop()
    try:
        descriptor: int | None = os.pidfd_open(identity.pid)
    except (OSError, AttributeError):
        descriptor = None
    # the pid could have been reused between the identity check and pidfd_open: check again
    if descriptor is not None and (run.process is not None or identity.alive()):
        run.watcher_fd = descriptor
        loop.add_reader(descriptor, _exited, run, identity, on_exit)
        return
    if descriptor is not None:
        os.close(descriptor)
    run.poll_task = loop.create_task(_poll_until_exit(run, identity, on_exit))


async def _poll_until_exit(run: ContainerRun, identity: procs.ProcessIdentity, on_exit: ExitHandler) -> None:
    while True:
        if run.process is not None and run.process.poll() is not None:
            break
        if run.process is None and not identity.alive():
            break
        await asyncio.sleep(POLL_SECONDS)
    run.poll_task = None
    _exited(run, identity, on_exit)


def stop_watching(run: ContainerRun) -> None:
    if run.watcher_fd is not None:
        try:
            asyncio.get_running_loop().remove_reader(run.watcher_fd)
        except RuntimeError:
            pass
        os.close(run.watcher_fd)
        run.watcher_fd = None
    if run.poll_task is not None:
        run.poll_task.cancel()
        run.poll_task = None


def _exited(run: ContainerRun, identity: procs.ProcessIdentity, on_exit: ExitHandler) -> None:
    if run.identity != identity:
        return
    stop_watching(run)
    if run.process is not None:
        code = run.process.wait()
        wait_status: int | None = (-code) if code < 0 else (code << 8)
    else:
        wait_status = procs.zombie_wait_status(identity)
    on_exit(run, identity, wait_status)


def record_exit(run: ContainerRun, wait_status: int | None, started_at: float) -> Terminated:
    """The run's terminated state once its main process ended with `wait_status` (None: unknown)."""
    now = time.time()
    if wait_status is None:
        state = Terminated(137, REASON_CONTAINER_STATUS_UNKNOWN, started_at, now,
                           "The container's exit code was lost while the node agent was restarting",
                           container_id=run.container_id)
    else:
        exit_code, number = exit_code_of_wait_status(wait_status)
        state = Terminated(exit_code, exit_reason(exit_code), started_at, now, signal=number,
                           container_id=run.container_id)
    run.state = state
    run.process = None
    run.identity = None
    run.ready = False
    run.started = False
    run.exited.set()
    run.stop_probes()
    return state
