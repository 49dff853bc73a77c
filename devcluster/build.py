"""Build (or find cached) the control-plane binaries from Go modules.

etcd and the Kubernetes binaries each come from a small wrapper module written into the
cache: Kubernetes' own go.mod lists its staging modules at v0.0.0 and relies on replace
directives that do not apply to a dependent, so the wrapper pins every one of them to the
matching v0.<minor>.<patch>. helm needs nothing of the kind: a plain `go install`.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.35.4"
ETCD_VERSION = "v3.5.35"
HELM_VERSION = "v3.19.5"

KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy")
ETCD_COMMANDS = ("etcd",)
HELM_COMMANDS = ("helm",)
ALL_COMMANDS = KUBE_COMMANDS + ETCD_COMMANDS + HELM_COMMANDS

# etcd's server module replaces its sibling modules with relative paths; pin them instead.
# client/v2 is versioned v2.3<minor>.<patch> alongside v3.<minor>.<patch>.
ETCD_CLIENT_V2_VERSION = "v2.305.35"
ETCD_SIBLINGS = {
    "go.etcd.io/etcd/api/v3": ETCD_VERSION,
    "go.etcd.io/etcd/client/pkg/v3": ETCD_VERSION,
    "go.etcd.io/etcd/client/v2": ETCD_CLIENT_V2_VERSION,
    "go.etcd.io/etcd/client/v3": ETCD_VERSION,
    "go.etcd.io/etcd/pkg/v3": ETCD_VERSION,
    "go.etcd.io/etcd/raft/v3": ETCD_VERSION,
}


class BuildError(RuntimeError):
    def __init__(self, step: str, log: Path):
        super().__init__(f"devcluster build: step '{step}' failed; see its log: {log}")
        self.step = step
        self.log = log


def cache_root() -> Path:
    configured = os.environ.get("DEVCLUSTER_CACHE")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "celery-operator"


def version_dir() -> Path:
    return cache_root() / f"k8s-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}-helm-{HELM_VERSION}"


def bin_dir() -> Path:
    return version_dir() / "bin"


def cached_binaries_complete() -> bool:
    directory = bin_dir()
    return all(os.access(directory / name, os.X_OK) for name in ALL_COMMANDS)


@dataclass(frozen=True)
class KubeVersion:
    major: str
    minor: str
    patch: str

    @classmethod
    def parse(cls, tag: str) -> "KubeVersion":
        found = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", tag)
        if not found:
            raise ValueError(f"not a release tag: {tag}")
        return cls(*found.groups())

    @property
    def staging_tag(self) -> str:
        return f"v0.{self.minor}.{self.patch}"


def _run(step: str, argv: list[str], cwd: Path, logs: Path, env: dict[str, str]) -> None:
    log = logs / f"{step}.log"
    started = time.monotonic()
    print(f"devcluster build: {step} ...", file=sys.stderr, flush=True)
    with log.open("w") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        result = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise BuildError(step, log)
    print(f"devcluster build: {step} done in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)


def _go_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"})
    env.setdefault("GOCACHE", str(cache_root() / "go-build"))
    return env


def _staging_modules(kubernetes_gomod: str) -> list[str]:
    return sorted(set(re.findall(r"^\s*(k8s\.io/[\w.-]+) v0\.0\.0$", kubernetes_gomod, re.M)))


def _module_dir(module: str, version: str, env: dict[str, str], cwd: Path) -> Path:
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        cwd=cwd, env=env, capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr or out.stdout)
    return Path(json.loads(out.stdout)["Dir"])


def _kube_ldflags(tag: str) -> str:
    version = KubeVersion.parse(tag)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={tag}",
            f"-X {package}.gitMajor={version.major}",
            f"-X {package}.gitMinor={version.minor}",
            f"-X {package}.gitTreeState=clean",
            f"-X {package}.buildDate={stamp}",
        ]
    return " ".join(flags)


def _write_tools_file(directory: Path, packages: list[str]) -> None:
    imports = "\n".join(f'\t_ "{package}"' for package in packages)
    (directory / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")


def _build_kubernetes(work: Path, out: Path, logs: Path, env: dict[str, str]) -> None:
    module = work / "kubernetes"
    module.mkdir(parents=True, exist_ok=True)
    version = KubeVersion.parse(KUBERNETES_VERSION)
    try:
        source = _module_dir("k8s.io/kubernetes", KUBERNETES_VERSION, env, module)
    except RuntimeError as failure:
        (logs / "kubernetes-download.log").write_text(str(failure))
        raise BuildError("kubernetes-download", logs / "kubernetes-download.log") from failure
    replaces = "\n".join(
        f"\t{name} v0.0.0 => {name} {version.staging_tag}"
        for name in _staging_modules((source / "go.mod").read_text())
    )
    (module / "go.mod").write_text(
        "module devcluster.local/kubernetes\n\ngo 1.25.0\n\n"
        f"require k8s.io/kubernetes {KUBERNETES_VERSION}\n\nreplace (\n{replaces}\n)\n"
    )
    packages = [f"k8s.io/kubernetes/cmd/{name}" for name in KUBE_COMMANDS]
    _write_tools_file(module, packages)
    _run("kubernetes-mod-tidy", ["go", "mod", "tidy"], module, logs, env)
    _run(
        "kubernetes-compile",
        ["go", "build", "-trimpath", "-ldflags", _kube_ldflags(KUBERNETES_VERSION), "-o", str(out) + "/", *packages],
        module, logs, env,
    )


def _build_etcd(work: Path, out: Path, logs: Path, env: dict[str, str]) -> None:
    module = work / "etcd"
    module.mkdir(parents=True, exist_ok=True)
    replaces = "\n".join(f"\t{name} => {name} {tag}" for name, tag in ETCD_SIBLINGS.items())
    (module / "go.mod").write_text(
        "module devcluster.local/etcd\n\ngo 1.23\n\n"
        f"require go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n\nreplace (\n{replaces}\n)\n"
    )
    _write_tools_file(module, ["go.etcd.io/etcd/server/v3"])
    _run("etcd-mod-tidy", ["go", "mod", "tidy"], module, logs, env)
    _run(
        "etcd-compile",
        ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "etcd"), "go.etcd.io/etcd/server/v3"],
        module, logs, env,
    )


def _helm_ldflags() -> str:
    """Helm's own version, and the pinned Kubernetes as the version `helm template` assumes
    when it talks to no cluster (otherwise v1.20, older than our charts' kubeVersion)."""
    kube = KubeVersion.parse(KUBERNETES_VERSION)
    flags = ["-s", "-w", f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"]
    for package in ("helm.sh/helm/v3/pkg/chartutil", "helm.sh/helm/v3/pkg/lint/rules"):
        flags += [f"-X {package}.k8sVersionMajor={kube.major}", f"-X {package}.k8sVersionMinor={kube.minor}"]
    return " ".join(flags)


def _build_helm(work: Path, out: Path, logs: Path, env: dict[str, str]) -> None:
    helm_env = dict(env, GOBIN=str(out), GOFLAGS="")
    _run(
        "helm-install",
        ["go", "install", "-trimpath", "-ldflags", _helm_ldflags(), f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"],
        work, logs, helm_env,
    )


def build(only: tuple[str, ...] = ()) -> Path:
    """Return the bin directory, building whatever is missing from it."""
    target = bin_dir()
    if cached_binaries_complete():
        return target
    root = version_dir()
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second concurrent build waits, then finds the binaries
        return _build_missing(root, target, only)


def _build_missing(root: Path, target: Path, only: tuple[str, ...]) -> Path:
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    work = root / "src"
    work.mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="bin-", dir=root))
    env = _go_env(work)
    steps = (
        (ETCD_COMMANDS, _build_etcd),
        (HELM_COMMANDS, _build_helm),
        (KUBE_COMMANDS, _build_kubernetes),
    )
    target.mkdir(exist_ok=True)
    for commands, step in steps:
        if only and not set(commands) & set(only):
            continue
        if all(os.access(target / name, os.X_OK) for name in commands):
            continue
        step(work, staging, logs, env)
        for name in commands:
            # rename is atomic: a concurrent reader never sees a half-written binary
            os.replace(staging / name, target / name)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def go_tool_dir(name: str, version: str) -> Path:
    """Where a tool built from its Go module is cached: <cache>/<name>-<version>/bin/<name>."""
    return cache_root() / f"{name}-{version}"


def go_install(name: str, package: str, version: str, ldflags: str, *, nice: int = 0) -> Path:
    """Return the cached binary `name` of `package@version`, built first with `go install` when the
    cache lacks it (for modules whose go.mod has no replace directives, which `go install` refuses).
    A concurrent build waits on the lock and then finds the binary; it appears by an atomic rename."""
    root = go_tool_dir(name, version)
    target = root / "bin" / name
    if os.access(target, os.X_OK):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.access(target, os.X_OK):
            logs = root / "logs"
            logs.mkdir(exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix="bin-", dir=root))
            env = dict(_go_env(root), GOBIN=str(staging), GOFLAGS="")
            niceness = ["nice", "-n", str(nice)] if nice else []
            _run(f"{name}-install", [*niceness, "go", "install", "-trimpath", "-ldflags", ldflags,
                                     f"{package}@{version}"], root, logs, env)
            target.parent.mkdir(exist_ok=True)
            os.replace(staging / name, target)
            staging.rmdir()
    return target


def run_and_report(label: str, produce: Callable[[], Path]) -> int:
    """A build command's exit: print what `produce` made (its time too when it built), or why not."""
    started = time.monotonic()
    try:
        made = produce()
    except BuildError as failure:
        print(str(failure), file=sys.stderr)
        return 1
    elapsed = time.monotonic() - started
    if elapsed > 5:
        print(f"devcluster {label}: finished in {elapsed:.0f}s", file=sys.stderr)
    print(made)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_and_report("build", build)
