"""Build (or find cached) KEDA's operator and metrics API server from its Go module, with its config/.

KEDA's go.mod carries a replace directive, which `go install module@version` refuses, so the
module's source is copied out of the read-only module cache and built there with `go build`,
stamped the way KEDA's Makefile stamps a release. The admission webhooks are not built: nothing
here uses them. The module's config/ (CRDs, RBAC, the metrics server's APIService and Deployment)
is kept next to the binaries for whoever deploys them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import tempfile
from pathlib import Path

from devcluster import build

KEDA_MODULE = "github.com/kedacore/keda/v2"
KEDA_VERSION = "v2.21.0"

# command package -> the binary's name in KEDA's own images (their Deployments run these paths)
COMMANDS = {"cmd/operator": "keda", "cmd/adapter": "keda-adapter"}


def version_dir() -> Path:
    return build.cache_root() / f"keda-{KEDA_VERSION}"


def bin_dir() -> Path:
    return version_dir() / "bin"


def config_dir() -> Path:
    """The module's config/: crd/bases, rbac, metrics-server, manager, service_account, ..."""
    return version_dir() / "config"


def _complete() -> bool:
    return config_dir().is_dir() and all(os.access(bin_dir() / name, os.X_OK) for name in COMMANDS.values())


def is_built() -> bool:
    """Both binaries and the config/ are in the cache (a test that deploys KEDA needs them)."""
    return _complete()


def ldflags(version: str = KEDA_VERSION) -> str:
    """KEDA's Makefile sets version.Version and version.GitCommit; a module has no commit."""
    package = f"{KEDA_MODULE}/version"
    return f"-s -w -X {package}.Version={version.lstrip('v')} -X {package}.GitCommit=module-{version}"


def ensure() -> Path:
    """Return the bin directory holding keda and keda-adapter, building them first when missing."""
    if _complete():
        return bin_dir()
    root = version_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent build waits, then finds the binaries
        if not _complete():
            _build(root)
    return bin_dir()


def _writable_copy(source: Path, target: Path) -> None:
    """The module cache is read-only; go may rewrite go.sum, and a later rmtree must succeed."""
    shutil.copytree(source, target, copy_function=shutil.copyfile)
    for directory, _, files in os.walk(target):
        os.chmod(directory, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)


def _source(root: Path, logs: Path, env: dict[str, str]) -> Path:
    try:
        downloaded = build._module_dir(KEDA_MODULE, KEDA_VERSION, env, root)
    except RuntimeError as failure:
        (logs / "keda-download.log").write_text(str(failure))
        raise build.BuildError("keda-download", logs / "keda-download.log") from failure
    source = root / "src"
    shutil.rmtree(source, ignore_errors=True)
    _writable_copy(downloaded, source)
    return source


def _build(root: Path) -> None:
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    env = dict(build._go_env(root), GOFLAGS="-mod=mod -buildvcs=false")  # the copy has no VCS to stamp
    source = _source(root, logs, env)
    staging = Path(tempfile.mkdtemp(prefix="bin-", dir=root))
    try:
        for package, name in COMMANDS.items():
            build._run(f"keda-compile-{name}",
                       ["go", "build", "-trimpath", "-ldflags", ldflags(), "-o", str(staging / name), f"./{package}"],
                       source, logs, env)
        shutil.copytree(source / "config", staging / "config")
        shutil.rmtree(config_dir(), ignore_errors=True)
        os.replace(staging / "config", config_dir())
        bin_dir().mkdir(exist_ok=True)
        for name in COMMANDS.values():
            os.replace(staging / name, bin_dir() / name)  # atomic: a reader never sees a half-written binary
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(source, ignore_errors=True)


def main() -> int:
    return build.run_and_report("keda", ensure)
