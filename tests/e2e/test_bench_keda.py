"""The KEDA benchmark runs end to end in its quick form and measures every cell of every table.

It brings up a cluster of its own (KEDA from the image built here, the chart's operator, a Redis on the
host) and runs every scenario once for the three contenders; a cell it could not measure makes it exit
non-zero and name the cell, and a table missing from its output fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import bench_keda, figures
from devcluster import keda

pytestmark = [
    pytest.mark.e2e, pytest.mark.timeout(2400),
    pytest.mark.skipif(not keda.is_built(), reason="KEDA's binaries are not built: run `make keda`"),
]

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("First message on a queue at zero", "Drain:", "A burst", "Priorities:", "Scale-down safety:", "Idle:")


def test_the_quick_run_measures_every_cell_for_keda_and_for_us(tmp_path: Path) -> None:
    out = tmp_path / "figures.jsonl"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_keda.py"), "--quick", "--figures", str(out)],
                            capture_output=True, text=True, timeout=2300, cwd=ROOT)
    report = f"stdout:\n{result.stdout[-6000:]}\nstderr:\n{result.stderr[-6000:]}"
    assert result.returncode == 0, report
    for title in TABLES:
        assert f"**{title}" in result.stdout, f"no table {title!r}\n{report}"
    assert bench_keda.NOT_MEASURED not in result.stdout, report
    for column in bench_keda.COLUMNS:
        assert column in result.stdout
    headline = figures.parse(out.read_text())
    assert headline and all(f.unit == "×" and f.value > 0 for f in headline), headline
