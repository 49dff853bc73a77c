"""python -m devcluster logs NAMESPACE/POD [-c CONTAINER] [-f] [--tail N] [--dir DIR]

Prints a pod container's log as the node agent wrote it (stdout and stderr of every run of the
container, in `<cluster dir>/pods/<namespace>_<pod>/logs/<container>.log`). With -f it keeps
printing what the container writes until the container stops running.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import BinaryIO

from devcluster.agent import layout

FOLLOW_POLL_SECONDS = 0.2
STOPPED_GRACE_SECONDS = 1.0


def _default_dir() -> Path:
    try:
        from devcluster.cluster import DEFAULT_DIR
    except ImportError:  # pragma: no cover - the cluster module is always there in this project
        return Path.cwd() / ".devcluster" / "default"
    return DEFAULT_DIR


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devcluster logs", description=__doc__.split("\n\n")[1])
    parser.add_argument("pod", metavar="NAMESPACE/POD", help="the pod (namespace 'default' when omitted)")
    parser.add_argument("-c", "--container", help="the container (optional when the pod has one)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing until the container stops")
    parser.add_argument("--tail", type=int, default=-1, help="only the last N lines")
    parser.add_argument("--dir", type=Path, default=None, help="the cluster's directory")
    return parser


def pod_directory(cluster_dir: Path, reference: str) -> Path:
    namespace, _, name = reference.rpartition("/")
    return layout.pod_dir(cluster_dir, namespace or "default", name)


def containers_with_logs(pod_dir: Path) -> list[str]:
    return sorted(path.stem for path in (pod_dir / "logs").glob("*.log"))


def container_running(pod_dir: Path, container: str) -> bool:
    record = pod_dir / "run" / f"{container}.json"
    try:
        pid = json.loads(record.read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return False
    return Path(f"/proc/{pid}").exists()


def _write(out: BinaryIO, data: bytes) -> None:
    out.write(data)
    out.flush()


def print_log(path: Path, out: BinaryIO, tail: int) -> int:
    """Print the log (or its last `tail` lines); the offset printed up to."""
    with path.open("rb") as handle:
        if tail < 0:
            data = handle.read()
        elif tail == 0:
            data = b""
            handle.seek(0, 2)
        else:
            data = b"".join(deque(handle, maxlen=tail))
        offset = handle.tell()
    _write(out, data)
    return offset


def follow(path: Path, pod_dir: Path, container: str, offset: int, out: BinaryIO) -> None:
    stopped_since: float | None = None
    with path.open("rb") as handle:
        handle.seek(offset)
        while True:
            data = handle.read()
            if data:
                _write(out, data)
                stopped_since = None
                continue
            if container_running(pod_dir, container):
                stopped_since = None
            elif stopped_since is None:
                stopped_since = time.monotonic()
            elif time.monotonic() - stopped_since > STOPPED_GRACE_SECONDS:
                return
            time.sleep(FOLLOW_POLL_SECONDS)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    cluster_dir = (args.dir or _default_dir()).resolve()
    pod_dir = pod_directory(cluster_dir, args.pod)
    if not pod_dir.is_dir():
        print(f"error: no pod {args.pod} has run on this node (no {pod_dir})", file=sys.stderr)
        return 1
    containers = containers_with_logs(pod_dir)
    container = args.container
    if container is None:
        if len(containers) != 1:
            choice = " ".join(containers) or "(none has logged yet)"
            print(f"error: a container name must be specified for pod {args.pod}, choose one of: [{choice}]",
                  file=sys.stderr)
            return 1
        container = containers[0]
    path = pod_dir / "logs" / f"{container}.log"
    if not path.exists():
        print(f"error: container {container} is not valid for pod {args.pod}; containers with logs: "
              f"[{' '.join(containers)}]", file=sys.stderr)
        return 1
    out = sys.stdout.buffer
    try:
        offset = print_log(path, out, args.tail)
        if args.follow:
            follow(path, pod_dir, container, offset, out)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
