"""Processes of the devcluster's containers, seen from the host they run on (the nodes' containers
are processes of this machine): for faults a test produces for real, such as freezing a
container's main process.

A container's main process is the init of its PID namespace, and the kernel drops a SIGSTOP sent
to it from inside that namespace (`kubectl exec ... kill -STOP 1` is a no-op): it has to come from
the host.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def host_pid(container_id: str) -> int:
    """The host's pid of a container's main process: the process in the container's cgroup that is
    pid 1 of its own pid namespace. `container_id` as in a containerStatus, with or without its
    `containerd://` scheme."""
    container_id = container_id.removeprefix("containerd://")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroup, status = (entry / "cgroup").read_text(), (entry / "status").read_text()
        except OSError:
            continue  # gone meanwhile
        nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
        if container_id in cgroup and nspid[-1:] == ["1"]:
            return int(entry.name)
    raise AssertionError(f"no process of container {container_id} on this machine")


def freeze(container_id: str) -> int:
    """SIGSTOP a container's main process (only it: its children, say Celery's pool, keep running);
    returns its host pid."""
    pid = host_pid(container_id)
    os.kill(pid, signal.SIGSTOP)
    return pid
