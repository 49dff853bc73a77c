"""Container processes: start them, record them, recognise them again, signal them.

A container is one process started in a session of its own (so its whole group can be killed),
in a UTS namespace of its own whose hostname is the pod's (`unshare --uts`, then `hostname`,
then `exec` of the container command, which thus stays the session leader and the process that
receives SIGTERM). Each started process is recorded in the pod directory with its start time
(field 22 of /proc/PID/stat) and the boot ID, so a pid is only ever signalled while it is still
the very process that was started.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

log = logging.getLogger(__name__)

HOSTNAME_WRAPPER = 'hostname "$0" && exec "$@"'
MAX_HOSTNAME_LENGTH = 63


def read_boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


BOOT_ID = read_boot_id()


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    return stat[stat.rindex(")") + 2:].split()


def process_start_ticks(pid: int) -> int | None:
    """Start time in clock ticks since boot, or None if the process is gone or a zombie."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_session(pid: int) -> int | None:
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return int(fields[3])


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as it was started: its pid alone may be reused, pid + start time + boot may not."""

    pid: int
    start_ticks: int
    boot_id: str

    def alive(self) -> bool:
        return self.boot_id == BOOT_ID and process_start_ticks(self.pid) == self.start_ticks


def identify(pid: int) -> ProcessIdentity | None:
    ticks = process_start_ticks(pid)
    return None if ticks is None else ProcessIdentity(pid, ticks, BOOT_ID)


def session_members(identity: ProcessIdentity) -> list[int]:
    """Live processes of the container's session (its leader is the container's main process).
    If the leader's pid now belongs to another process, nothing is the container's any more; while
    a session has members its id cannot be given to a new process, and members started before the
    leader cannot be the container's."""
    if identity.boot_id != BOOT_ID:
        return []
    leader = _stat_fields(identity.pid)
    if leader is not None and int(leader[19]) != identity.start_ticks:
        return []
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None or fields[0] in ("Z", "X"):
            continue
        if int(fields[3]) == identity.pid and int(fields[19]) >= identity.start_ticks:
            members.append(int(entry))
    return members


def signal_main_process(identity: ProcessIdentity, number: int) -> bool:
    """Send a signal to the container's main process only. False if it is gone."""
    if not identity.alive():
        return False
    try:
        os.kill(identity.pid, number)
    except ProcessLookupError:
        return False
    return True


def kill_session(identity: ProcessIdentity) -> int:
    """SIGKILL every process of the container's session; the number of processes signalled."""
    killed = 0
    for pid in session_members(identity):
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


# --- records -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ContainerRecord:
    """What the pod directory keeps about a running container (run/<container>.json)."""

    container: str
    pid: int
    start_ticks: int
    boot_id: str
    started_at: float
    restart_count: int
    init: bool = False

    @property
    def identity(self) -> ProcessIdentity:
        return ProcessIdentity(self.pid, self.start_ticks, self.boot_id)


def run_dir(pod_dir: Path) -> Path:
    return pod_dir / "run"


def write_record(pod_dir: Path, record: ContainerRecord) -> None:
    directory = run_dir(pod_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{record.container}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(record)))
    temporary.replace(path)


def remove_record(pod_dir: Path, container: str) -> None:
    (run_dir(pod_dir) / f"{container}.json").unlink(missing_ok=True)


def read_records(pod_dir: Path) -> list[ContainerRecord]:
    records = []
    directory = run_dir(pod_dir)
    if not directory.is_dir():
        return records
    for path in sorted(directory.glob("*.json")):
        try:
            records.append(ContainerRecord(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            log.warning("unreadable process record %s", path)
    return records


# --- starting ----------------------------------------------------------------------------------

def pod_hostname(pod_name: str, spec_hostname: str | None = None) -> str:
    """The hostname a pod's processes see: spec.hostname or the pod name, cut to 63 characters."""
    name = (spec_hostname or pod_name)[:MAX_HOSTNAME_LENGTH]
    return name.rstrip("-.") or name


def _uts_namespaces_usable() -> bool:
    if not shutil.which("unshare") or not shutil.which("hostname"):
        return False
    try:
        probe = subprocess.run(["unshare", "--uts", "--", "sh", "-c", HOSTNAME_WRAPPER, "devcluster-probe", "true"],
                               capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


_UTS_USABLE: bool | None = None


def uts_namespaces_usable() -> bool:
    global _UTS_USABLE
    if _UTS_USABLE is None:
        _UTS_USABLE = _uts_namespaces_usable()
        if not _UTS_USABLE:
            log.warning("unshare --uts does not work here: pod processes will see the machine's hostname")
    return _UTS_USABLE


def with_hostname(argv: Sequence[str], hostname: str) -> list[str]:
    """argv run in a UTS namespace of its own named `hostname`, exec'd so it keeps its pid."""
    if not uts_namespaces_usable():
        return list(argv)
    return ["unshare", "--uts", "--", "sh", "-c", HOSTNAME_WRAPPER, hostname, *argv]


def find_executable(name: str, path: str, cwd: Path) -> str | None:
    if "/" in name:
        candidate = name if os.path.isabs(name) else str(cwd / name)
        return candidate if os.access(candidate, os.X_OK) and not os.path.isdir(candidate) else None
    return shutil.which(name, path=path)


def start_process(argv: Sequence[str], env: Mapping[str, str], cwd: Path, log_path: Path,
                  hostname: str) -> subprocess.Popen:
    """Start a container's main process (in a new session, stdout+stderr appended to its log)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            with_hostname(argv, hostname), env=dict(env), cwd=str(cwd),
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
            start_new_session=True, close_fds=True,
        )


def zombie_wait_status(identity: ProcessIdentity) -> int | None:
    """The wait status of a process that exited but was not reaped yet (field 52 of its stat):
    how an adopted container's exit code is read although the agent is not its parent."""
    fields = _stat_fields(identity.pid)
    if fields is None or fields[0] != "Z" or len(fields) < 50 or int(fields[19]) != identity.start_ticks:
        return None
    return int(fields[49])
