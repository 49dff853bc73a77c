"""devcluster figures: cached build call, `up` time (fresh directory, median of N), the running
control plane's memory, `down` time. Prints a table.

    .venv/bin/python bench/bench_devcluster.py [--runs 5]
"""

from __future__ import annotations

import argparse
import sys
import shutil
import statistics
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # devcluster runs from the checkout

from bench import figures  # noqa: E402
from devcluster import build, cluster  # noqa: E402


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _timed(action) -> tuple[float, object]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=1, help="real nodes (0 = the control plane alone)")
    figures.add_argument(parser)
    args = parser.parse_args()

    build_seconds, _ = _timed(build.build)
    up_times, down_times, memory = [], [], {}
    for _ in range(args.runs):
        directory = Path(tempfile.mkdtemp(prefix="bench-devcluster-"))
        seconds, running = _timed(lambda: cluster.up(directory, nodes=args.nodes))
        up_times.append(seconds)
        time.sleep(5)  # let the controllers finish their start-up sync before reading memory
        memory = {name: _rss_mib(pid) for name, pid in cluster.running_components(running).items()}
        seconds, _ = _timed(lambda: cluster.down(directory))
        down_times.append(seconds)
        shutil.rmtree(directory, ignore_errors=True)

    print(f"{'figure':<44} {'value':>12}")
    print(f"{'cached `build` call':<44} {build_seconds * 1000:>10.0f}ms")
    print(f"{'`up`, fresh dir, median of ' + str(args.runs):<44} {statistics.median(up_times):>11.2f}s")
    print(f"{'`up`, min / max':<44} {min(up_times):>5.2f}/{max(up_times):.2f}s")
    print(f"{'`down`, median':<44} {statistics.median(down_times):>11.2f}s")
    for name, mib in memory.items():
        print(f"{'RSS ' + name:<44} {mib:>9.0f}MiB")
    print(f"{'RSS control plane and nodes total':<44} {sum(memory.values()):>9.0f}MiB")
    nodes = f"{args.nodes} node{'s' if args.nodes != 1 else ''}"
    figures.report(args.figures, [
        figures.Figure("devcluster: cached `build` call", build_seconds * 1000, "ms"),
        figures.Figure(f"devcluster `up`, {nodes}, images cached, median of {args.runs}",
                       statistics.median(up_times), "s"),
        figures.Figure("devcluster `down`, median", statistics.median(down_times), "s"),
        figures.Figure(f"devcluster RSS, control plane and {nodes}", sum(memory.values()), "MiB"),
    ])


if __name__ == "__main__":
    main()
