"""Build (or find cached) kube-score from its Go module, to score the chart and the operator's children.

kube-score's go.mod has no replace directives, so a plain `go install module@version` builds it;
its version variables are goreleaser's, set here with ldflags so `kube-score version` names the tag.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from devcluster import build

KUBE_SCORE_MODULE_VERSION = "v1.20.0"


def version_dir() -> Path:
    return build.cache_root() / f"kube-score-{KUBE_SCORE_MODULE_VERSION}"


def binary() -> Path:
    return version_dir() / "bin" / "kube-score"


def _ldflags() -> str:
    return f"-s -w -X main.version={KUBE_SCORE_MODULE_VERSION.removeprefix('v')} -X main.commit=module"


def ensure() -> Path:
    """Return the kube-score binary, building it first when the cache lacks it."""
    target = binary()
    if os.access(target, os.X_OK):
        return target
    root = version_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build waits, then finds the binary
        if not os.access(target, os.X_OK):
            _build(root, target)
    return target


def _build(root: Path, target: Path) -> None:
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="bin-", dir=root))
    env = dict(build._go_env(root), GOBIN=str(staging), GOFLAGS="")
    build._run(
        "kube-score-install",
        ["nice", "-n", "10", "go", "install", "-trimpath", "-ldflags", _ldflags(),
         f"github.com/zegl/kube-score/cmd/kube-score@{KUBE_SCORE_MODULE_VERSION}"],
        root, logs, env,
    )
    target.parent.mkdir(exist_ok=True)
    os.replace(staging / "kube-score", target)  # atomic: a reader never sees a half-written binary
    staging.rmdir()


def main() -> int:
    return build.run_and_report("kube-score", ensure)
