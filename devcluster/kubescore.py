"""Build (or find cached) kube-score from its Go module, to score the chart and the operator's children.

kube-score's go.mod has no replace directives, so a plain `go install module@version` builds it;
its version variables are goreleaser's, set here with ldflags so `kube-score version` names the tag.
"""

from __future__ import annotations

from pathlib import Path

from devcluster import build

KUBE_SCORE_MODULE_VERSION = "v1.20.0"


def version_dir() -> Path:
    return build.go_tool_dir("kube-score", KUBE_SCORE_MODULE_VERSION)


def binary() -> Path:
    return version_dir() / "bin" / "kube-score"


def _ldflags() -> str:
    return f"-s -w -X main.version={KUBE_SCORE_MODULE_VERSION.removeprefix('v')} -X main.commit=module"


def ensure() -> Path:
    """Return the kube-score binary, building it first when the cache lacks it."""
    return build.go_install("kube-score", "github.com/zegl/kube-score/cmd/kube-score", KUBE_SCORE_MODULE_VERSION, _ldflags(), nice=10)


def main() -> int:
    return build.run_and_report("kube-score", ensure)
