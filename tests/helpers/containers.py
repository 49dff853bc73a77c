"""Processes of the devcluster's containers, seen from the host they run on (the nodes' containers
are processes of this machine): for faults a test produces for real, such as freezing a
container's main process.

The freeze comes from the host: in a pod of its own PID namespace the main process is that
namespace's init, and the kernel drops a SIGSTOP sent to it from inside (`kubectl exec ... kill
-STOP 1` is a no-op); worker pods share their namespace with the pause container instead, so there
the main process is not pid 1 at all.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _parent_and_start(stat: str) -> tuple[int, int]:
    """From /proc/<pid>/stat: the parent's pid and the start time (clock ticks after boot)."""
    fields = stat[stat.rindex(")") + 2:].split()  # after the command name, which may hold spaces
    return int(fields[1]), int(fields[19])


def host_pid(container_id: str) -> int:
    """The host's pid of a container's main process: of the processes in the container's cgroup whose
    parent is outside it (the shim's children: the main process, and any `exec` into the container,
    a probe say), the one that started first. `container_id` as in a containerStatus, with or
    without its `containerd://` scheme."""
    container_id = container_id.removeprefix("containerd://")
    found: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroup, stat = (entry / "cgroup").read_text(), (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        if container_id in cgroup:
            found[int(entry.name)] = _parent_and_start(stat)
    started_by_the_shim = {pid: start for pid, (parent, start) in found.items() if parent not in found}
    if not started_by_the_shim:
        raise AssertionError(f"no process of container {container_id} on this machine")
    return min(started_by_the_shim, key=started_by_the_shim.__getitem__)


def freeze(container_id: str) -> int:
    """SIGSTOP a container's main process (only it: its children, say Celery's pool, keep running);
    returns its host pid."""
    pid = host_pid(container_id)
    os.kill(pid, signal.SIGSTOP)
    return pid
