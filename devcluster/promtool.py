"""Build (or find cached) promtool from the Prometheus Go module, to check the chart's alert rules.

Prometheus v3 tags its Go module v0.3<minor>.<patch> (3.16.0 is v0.316.0); its go.mod has no
replace directives, so a plain `go install module@version` builds it.
"""

from __future__ import annotations

from pathlib import Path

from devcluster import build

PROMETHEUS_MODULE_VERSION = "v0.316.0"


def release_version(module_version: str = PROMETHEUS_MODULE_VERSION) -> str:
    """The release a module tag stands for: v0.316.0 is 3.16.0, and v0.54.1 (before v3) is 2.54.1."""
    combined, patch = (int(part) for part in module_version.removeprefix("v0.").split(".")[:2])
    major, minor = divmod(combined, 100) if combined >= 300 else (2, combined)
    return f"{major}.{minor}.{patch}"


def version_dir() -> Path:
    return build.go_tool_dir("promtool", PROMETHEUS_MODULE_VERSION)


def binary() -> Path:
    return version_dir() / "bin" / "promtool"


def _ldflags() -> str:
    package = "github.com/prometheus/common/version"
    return f"-s -w -X {package}.Version={release_version()} -X {package}.Branch=HEAD -X {package}.Revision=module"


def ensure() -> Path:
    """Return the promtool binary, building it first when the cache lacks it."""
    return build.go_install("promtool", "github.com/prometheus/prometheus/cmd/promtool", PROMETHEUS_MODULE_VERSION, _ldflags())


def main() -> int:
    return build.run_and_report("promtool", ensure)
