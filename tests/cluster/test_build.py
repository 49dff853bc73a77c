"""`python -m devcluster build`: finds the cache without Go, and a failed step says where its log is."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devcluster import build

pytestmark = pytest.mark.cluster


def _build_cli(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "devcluster", "build"], capture_output=True, text=True,
                          env=env, timeout=600)


def test_cached_build_prints_the_bin_directory_without_needing_go(devcluster) -> None:
    without_go = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                 if not (Path(p) / "go").exists())
    result = _build_cli(dict(os.environ, PATH=without_go))
    assert result.returncode == 0, result.stderr
    printed = Path(result.stdout.strip().splitlines()[-1])
    assert printed == build.bin_dir()
    assert sorted(path.name for path in printed.iterdir()) == sorted(build.ALL_COMMANDS)


def test_failed_build_names_the_step_and_its_log(tmp_path: Path) -> None:
    offline = dict(os.environ, DEVCLUSTER_CACHE=str(tmp_path / "cache"), GOMODCACHE=str(tmp_path / "mod"),
                   GOPROXY="off", GOFLAGS="")
    result = _build_cli(offline)
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("devcluster build: step 'etcd-mod-tidy' failed; see its log: ")
    log = Path(message.rsplit(": ", 1)[1])
    assert log.is_file() and "GOPROXY=off" in log.read_text()
