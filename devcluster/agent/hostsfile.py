"""The cluster's block in /etc/hosts: Service names for pod processes and host processes alike.

The block is delimited by two marker lines naming the cluster directory, so several clusters
keep their own blocks side by side; it is rewritten atomically (a temporary file renamed over
/etc/hosts, or an in-place rewrite when /etc/hosts is a mount point) under a lock that every
agent of this machine shares.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

HOSTS_PATH = Path("/etc/hosts")
LOCK_PATH = Path(tempfile.gettempdir()) / "devcluster-etc-hosts.lock"


def begin_marker(cluster_dir: Path) -> str:
    return f"# BEGIN devcluster {cluster_dir} (written by the node agent; do not edit)"


def end_marker(cluster_dir: Path) -> str:
    return f"# END devcluster {cluster_dir}"


def render_block(cluster_dir: Path, entries: Sequence[tuple[str, Sequence[str]]]) -> str:
    lines = [begin_marker(cluster_dir)]
    lines += [f"{address}\t{' '.join(names)}" for address, names in entries]
    lines.append(end_marker(cluster_dir))
    return "\n".join(lines) + "\n"


def replace_block(text: str, cluster_dir: Path, block: str | None) -> str:
    """`text` without this cluster's block, plus `block` at the end when given."""
    begin, end = begin_marker(cluster_dir), end_marker(cluster_dir)
    kept: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        stripped = line.rstrip("\n")
        if stripped == begin:
            inside = True
            continue
        if inside and stripped == end:
            inside = False
            continue
        if not inside:
            kept.append(line)
    result = "".join(kept)
    if block:
        if result and not result.endswith("\n"):
            result += "\n"
        result += block
    return result


@contextmanager
def hosts_lock(lock_path: Path = LOCK_PATH) -> Iterator[None]:
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomically(path: Path, text: str) -> None:
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    descriptor, temporary = tempfile.mkstemp(prefix=".hosts.", dir=str(path.parent))
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        try:
            os.replace(temporary, path)
            return
        except OSError as failure:
            if failure.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM):
                raise
        # /etc/hosts is a bind mount: rewrite it in place, in one write
        with open(path, "r+") as handle:
            handle.write(text)
            handle.truncate()
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def set_block(cluster_dir: Path, entries: Sequence[tuple[str, Sequence[str]]] | None,
              path: Path = HOSTS_PATH, lock_path: Path = LOCK_PATH) -> bool:
    """Make the cluster's block hold `entries` (None or empty: remove it). True if the file changed."""
    with hosts_lock(lock_path):
        current = path.read_text() if path.exists() else ""
        wanted = replace_block(current, cluster_dir, render_block(cluster_dir, entries) if entries else None)
        if wanted == current:
            return False
        _write_atomically(path, wanted)
        return True
