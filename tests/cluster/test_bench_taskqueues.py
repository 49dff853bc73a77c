"""bench/bench_taskqueues.py runs end to end in a small run on a devcluster of its own: its operator
on the host reaches every managed Redis (cluster DNS, NetworkPolicies, local images) so each
TaskQueue becomes Ready, and, settled, that operator writes nothing to the API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import figures

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]


def test_a_small_run_reaches_ready_and_settles_without_writes(tmp_path: Path) -> None:
    figures_file = tmp_path / "figures.jsonl"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_taskqueues.py"), "--count", "5",
                             "--settle", "25", "--timeout", "300", "--figures", str(figures_file)],
                            capture_output=True, text=True, timeout=1100, cwd=ROOT)
    report = f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    assert result.returncode == 0, report
    measured = {figure.name: figure for figure in figures.parse(figures_file.read_text())}
    assert measured["5 TaskQueues: operator start → all Ready"].value > 0, report
    assert measured["5 TaskQueues: writes per minute once settled"].value == 0, report
