"""Processes of the devcluster's containers, seen from the host they run on (the nodes are this
machine): for faults a test produces for real, such as freezing a container's main process.

A container's main process is the init of its PID namespace, and the kernel drops SIGSTOP sent to
it from inside that namespace (`kubectl exec ... kill -STOP 1` does nothing): it has to come from
the host.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _environ(pid: str) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def _is_namespace_init(pid: str) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
    return len(nspid) >= 2 and nspid[-1] == "1"


def main_process(pod: str, program: str) -> int:
    """The host PID of the main process of `pod`'s container whose command line contains `program`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if program in cmdline and _environ(pid).get("HOSTNAME") == pod and _is_namespace_init(pid):
            found.append(int(pid))
    if len(found) != 1:
        raise AssertionError(f"expected one main process of {program!r} in pod {pod}, found {found}")
    return found[0]


def freeze(pod: str, program: str) -> int:
    """SIGSTOP the container's main process (only it: its children, say Celery's pool, keep running)."""
    pid = main_process(pod, program)
    os.kill(pid, signal.SIGSTOP)
    return pid
