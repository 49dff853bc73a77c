"""Build (or find cached) every image the devcluster runs, without any image registry.

Two Debian bookworm roots made with debootstrap (the base with python3, and one with redis-server)
are imported as images; everything else is built from a Dockerfile by a private dockerd that
runs only while building, with BuildKit and no network inside the build. Python packages come as
wheels built on the host beforehand; the cluster's own binaries (pause, CoreDNS, the volume
provisioner) are compiled on the host and copied into FROM scratch images.

Each image is cached as a docker-archive tarball under ~/.cache/celery-operator/images/, named by
a digest of everything it is made from (the Dockerfile, every file of its build context, the base
image's id, the wheels, the compilers' and modules' versions). A call whose inputs are unchanged
returns at once and starts nothing; `ctr images import <archive>` loads an image into containerd.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from devcluster import build, keda

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = Path(__file__).resolve().parent / "images"

# Bump when the way images are made changes in a way their inputs do not show.
RECIPE_VERSION = 2

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
COREDNS_VERSION = "v1.13.2"  # the v1.13 line kubeadm v1.35 pairs with Kubernetes
# v0.0.33 is on the module proxy, but the checksum database it serves here has no record of it:
# the newest release that verifies.
LOCAL_PATH_PROVISIONER_VERSION = "v0.0.30"
PAUSE_VERSION = "3.10.1"  # build/pause/Makefile's TAG in the pinned Kubernetes module

DOCKER = "/usr/bin/docker"  # docker.io's own client, which builds with BuildKit without buildx
UNIX_SOCKET_LIMIT = 100

IMAGE_KEYS = ("debian-base", "redis", "operator", "sample-app", "flower", "pause", "coredns",
              "local-path-provisioner")
# Built only when named: KEDA (for a side-by-side benchmark) is a long compile nothing else needs.
OPTIONAL_IMAGE_KEYS = ("keda",)


@dataclass(frozen=True)
class Image:
    key: str
    reference: str
    archive: Path


class ImageBuildError(RuntimeError):
    def __init__(self, step: str, log: Path):
        super().__init__(f"devcluster images: step '{step}' failed; see its log: {log}")
        self.step = step
        self.log = log


# --- recipes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rootfs:
    """A Debian root made by debootstrap, imported as a one-layer image."""

    key: str
    reference: str
    packages: tuple[str, ...]
    changes: tuple[str, ...] = ('ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
                                'CMD ["bash"]')


@dataclass(frozen=True)
class Context:
    """Files of a build context: paths (files or directories) relative to root."""

    root: Path
    include: tuple[str, ...] = (".",)


@dataclass(frozen=True)
class Wheels:
    """Requirements whose wheels are built on the host and put into the context as wheels/."""

    name: str
    requirements: tuple[str, ...]


@dataclass(frozen=True)
class GoBinary:
    name: str
    module: str
    version: str
    package: str


@dataclass(frozen=True)
class PauseBinary:
    name: str = "pause"


@dataclass(frozen=True)
class KedaBinaries:
    """KEDA's operator and metrics server, from devcluster/keda.py's own cache (a directory)."""

    name: str = "keda"


Binary = GoBinary | PauseBinary | KedaBinaries


@dataclass(frozen=True)
class Dockerfile:
    key: str
    reference: str
    dockerfile: Path
    context: Context | None = None
    base: str | None = None  # the key of the local image passed as build argument BASE
    wheels: Wheels | None = None
    binary: Binary | None = None
    build_args: tuple[tuple[str, str], ...] = ()


Recipe = Rootfs | Dockerfile


def _operator_requirements() -> tuple[str, ...]:
    """The project's runtime dependencies and its build backend: what operator/Dockerfile's
    offline build stage needs to build and install the package."""
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    return tuple(project["project"]["dependencies"]) + tuple(project["build-system"]["requires"])


def _requirements_file(path: Path) -> tuple[str, ...]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return tuple(line for line in lines if line)


def operator_version() -> str:
    """The operator's version (pyproject.toml): the tag of its image."""
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]


def recipes() -> dict[str, Recipe]:
    local_wheels = (("WHEELS", "local"),)
    found: list[Recipe] = [
        Rootfs("debian-base", "devcluster.local/debian-base:bookworm",
               packages=("python3", "python3-venv", "ca-certificates", "tzdata", "netbase")),
        Rootfs("redis-base", "devcluster.local/redis-base:bookworm", packages=("redis-server",)),
        Dockerfile("redis", "devcluster.local/redis:7", RECIPES_DIR / "redis" / "Dockerfile", base="redis-base"),
        Dockerfile("operator", f"ghcr.io/celery-operator/celery-operator:{operator_version()}", PROJECT_ROOT / "operator" / "Dockerfile",
                   context=Context(PROJECT_ROOT, ("pyproject.toml", "README.md", "operator/celery_operator")),
                   base="debian-base", wheels=Wheels("operator", _operator_requirements()),
                   build_args=local_wheels),
        Dockerfile("sample-app", "ghcr.io/celery-operator/sample-app:0.1.0", PROJECT_ROOT / "app" / "Dockerfile",
                   context=Context(PROJECT_ROOT / "app"), base="debian-base",
                   wheels=Wheels("sample-app", _requirements_file(PROJECT_ROOT / "app" / "requirements.txt")),
                   build_args=local_wheels),
        Dockerfile("flower", "devcluster.local/flower:2.0", RECIPES_DIR / "flower" / "Dockerfile",
                   context=Context(RECIPES_DIR / "flower", ("requirements.txt",)), base="debian-base",
                   wheels=Wheels("flower", _requirements_file(RECIPES_DIR / "flower" / "requirements.txt"))),
        Dockerfile("pause", "registry.k8s.io/pause:3.10", RECIPES_DIR / "pause" / "Dockerfile",
                   binary=PauseBinary()),
        Dockerfile("coredns", f"devcluster.local/coredns:{COREDNS_VERSION.lstrip('v')}",
                   RECIPES_DIR / "coredns" / "Dockerfile",
                   binary=GoBinary("coredns", "github.com/coredns/coredns", COREDNS_VERSION,
                                   "github.com/coredns/coredns")),
        Dockerfile("local-path-provisioner",
                   f"devcluster.local/local-path-provisioner:{LOCAL_PATH_PROVISIONER_VERSION.lstrip('v')}",
                   RECIPES_DIR / "local-path-provisioner" / "Dockerfile",
                   binary=GoBinary("local-path-provisioner", "github.com/rancher/local-path-provisioner",
                                   LOCAL_PATH_PROVISIONER_VERSION, "github.com/rancher/local-path-provisioner")),
        Dockerfile("keda", f"devcluster.local/keda:{keda.KEDA_VERSION.lstrip('v')}",
                   RECIPES_DIR / "keda" / "Dockerfile", binary=KedaBinaries()),
    ]
    return {recipe.key: recipe for recipe in found}


# --- cache keys (pure) -----------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative, with forward slashes
    sha256: str
    executable: bool


def digest_of(description: Mapping[str, object]) -> str:
    """A stable digest of a JSON-able description of an image's inputs."""
    return hashlib.sha256(json.dumps(description, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def dockerfile_inputs(recipe: Dockerfile, *, dockerfile_sha256: str, context: Sequence[FileEntry],
                      base_image_id: str | None, wheels: Sequence[FileEntry],
                      binary: Mapping[str, str] | None) -> dict[str, object]:
    """Everything a Dockerfile image is made from. Paths are relative, so a second clone of the
    repository shares the cache."""
    return {
        "recipe": RECIPE_VERSION,
        "reference": recipe.reference,
        "build_args": [list(pair) for pair in recipe.build_args],
        "dockerfile": dockerfile_sha256,
        "context": [[e.path, e.sha256, e.executable] for e in sorted(context, key=lambda e: e.path)],
        "base": base_image_id,
        "wheels": [[e.path, e.sha256] for e in sorted(wheels, key=lambda e: e.path)],
        "binary": dict(binary) if binary else None,
    }


def rootfs_inputs(recipe: Rootfs) -> dict[str, object]:
    # debootstrap's output is not reproducible: its archive, once made, is the image.
    return {"recipe": RECIPE_VERSION, "reference": recipe.reference, "suite": DEBIAN_SUITE,
            "variant": "minbase", "packages": sorted(recipe.packages), "changes": list(recipe.changes)}


def wheels_inputs(wheels: Wheels, python: str) -> dict[str, object]:
    return {"recipe": RECIPE_VERSION, "requirements": sorted(wheels.requirements), "python": python}


def _skipped(relative: Path) -> bool:
    return "__pycache__" in relative.parts or relative.suffix == ".pyc"


def context_files(context: Context) -> list[FileEntry]:
    """Every file of a build context, as the image build sees it (bytecode caches left out)."""
    entries = []
    for include in context.include:
        start = context.root / include
        paths = [start] if start.is_file() else sorted(p for p in start.rglob("*") if p.is_file())
        for path in paths:
            relative = path.relative_to(context.root)
            if _skipped(relative):
                continue
            entries.append(FileEntry(relative.as_posix(), _sha256_file(path), os.access(path, os.X_OK)))
    return sorted(entries, key=lambda e: e.path)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- cache layout ------------------------------------------------------------------------------


def images_dir() -> Path:
    return build.cache_root() / "images"


def _wheels_root() -> Path:
    return build.cache_root() / "wheels"


def _binaries_root() -> Path:
    return build.cache_root() / "image-binaries"


def _docker_root() -> Path:
    return build.cache_root() / "docker"


def _archive_path(key: str, digest: str) -> Path:
    return images_dir() / f"{key}-{digest[:16]}.tar"


def _record_path(archive: Path) -> Path:
    return archive.with_suffix(".json")


@dataclass(frozen=True)
class BuildRecord:
    """What the cache knows of one archive (the JSON file beside it)."""

    key: str
    reference: str
    image_id: str
    archive_bytes: int
    build_seconds: float
    inputs: dict = field(default_factory=dict)
    python: str | None = None  # the image's python3 version, which its wheels are resolved for


def read_record(image: Image) -> BuildRecord:
    return BuildRecord(**json.loads(_record_path(image.archive).read_text()))


def _cached(key: str, reference: str, digest: str) -> Image | None:
    archive = _archive_path(key, digest)
    if archive.is_file() and _record_path(archive).is_file():
        return Image(key, reference, archive)
    return None


def _prune_older_archives(key: str, keep: Path, retain: int = 2) -> None:
    """Keep this archive and the newest other one (another checkout may be on other inputs)."""
    others = sorted((p for p in images_dir().glob(f"{key}-*.tar") if p != keep and re.fullmatch(
        rf"{re.escape(key)}-[0-9a-f]{{16}}\.tar", p.name)), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in others[retain - 1:]:
        stale.unlink(missing_ok=True)
        _record_path(stale).unlink(missing_ok=True)


# --- steps -------------------------------------------------------------------------------------


class _Missing(Exception):
    """An input is not cached and this pass may not build it."""


def _log(message: str) -> None:
    print(f"devcluster images: {message}", file=sys.stderr, flush=True)


def _logs_dir() -> Path:
    directory = images_dir() / "logs"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _run_step(step: str, argv: Sequence[str], *, cwd: Path | None = None, env: Mapping[str, str] | None = None,
              stdin: int | None = None, quiet: bool = False) -> None:
    log = _logs_dir() / f"{step}.log"
    started = time.monotonic()
    if not quiet:
        _log(f"{step} ...")
    with log.open("w") as out:
        out.write("$ " + " ".join(argv) + "\n")
        out.flush()
        result = subprocess.run(list(argv), cwd=cwd, env=None if env is None else dict(env), stdin=stdin,
                                stdout=out, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise ImageBuildError(step, log)
    if not quiet:
        _log(f"{step} done in {time.monotonic() - started:.0f}s")


def _tool_version(argv: Sequence[str], step: str) -> str:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, check=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError) as failure:
        log = _logs_dir() / f"{step}.log"
        log.write_text(f"$ {' '.join(argv)}\n{failure}\n")
        raise ImageBuildError(step, log) from failure


def _go_env() -> dict[str, str]:
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="")
    env.setdefault("GOCACHE", str(build.cache_root() / "go-build"))
    return env


@functools.cache
def go_version() -> str:
    return _tool_version(["go", "env", "GOVERSION"], "go-version")


def _binary_identity(binary: Binary) -> dict[str, str]:
    if isinstance(binary, GoBinary):
        return {"name": binary.name, "module": binary.module, "version": binary.version, "go": go_version(),
                "flags": "-trimpath -ldflags=-s -w CGO_ENABLED=0"}
    if isinstance(binary, KedaBinaries):
        return {"name": binary.name, "module": keda.KEDA_MODULE, "version": keda.KEDA_VERSION, "go": go_version(),
                "commands": " ".join(keda.COMMANDS), "flags": f"-trimpath -ldflags={keda.ldflags()} CGO_ENABLED=0"}
    return {"name": binary.name, "kubernetes": build.KUBERNETES_VERSION, "pause": PAUSE_VERSION,
            "gcc": _tool_version(["gcc", "-dumpfullversion"], "gcc-version"), "flags": "-Os -static"}


def _binary_path(binary: Binary, identity: Mapping[str, str]) -> Path:
    return _binaries_root() / f"{binary.name}-{digest_of(identity)[:16]}" / binary.name


def _compile_go(binary: GoBinary, out: Path) -> None:
    _run_step(f"{binary.name}-compile",
              ["go", "install", "-trimpath", "-ldflags", "-s -w", f"{binary.package}@{binary.version}"],
              cwd=out, env=dict(_go_env(), GOBIN=str(out)))


def _pause_source() -> Path:
    env = dict(os.environ, GOFLAGS="-mod=mod", GOTOOLCHAIN="local")
    step = "pause-source"
    log = _logs_dir() / f"{step}.log"
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{build.KUBERNETES_VERSION}"],
                                cwd=scratch, env=env, capture_output=True, text=True)
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise ImageBuildError(step, log)
    return Path(json.loads(result.stdout)["Dir"]) / "build" / "pause" / "linux" / "pause.c"


def _compile_pause(out: Path) -> None:
    source = _pause_source()
    _run_step("pause-compile", ["gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{PAUSE_VERSION}-devcluster",
                                "-o", str(out / "pause"), str(source)])
    _run_step("pause-strip", ["strip", str(out / "pause")], quiet=True)


def _ensure_binary(binary: Binary, identity: Mapping[str, str]) -> Path:
    """The binary, compiled once per identity (its image's key needs only the identity)."""
    if isinstance(binary, KedaBinaries):
        return keda.ensure()  # a directory of binaries, cached (and locked) by devcluster/keda.py
    target = _binary_path(binary, identity)
    if target.is_file():
        return target
    target.parent.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{binary.name}-", dir=target.parent.parent))
    try:
        if isinstance(binary, GoBinary):
            _compile_go(binary, staging)
        else:
            _compile_pause(staging)
        target.parent.mkdir(exist_ok=True)
        os.replace(staging / binary.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _timed_binary(binary: Binary, identity: Mapping[str, str]) -> tuple[Path, float]:
    started = time.monotonic()
    return _ensure_binary(binary, identity), time.monotonic() - started


def _python_version(interpreter: str) -> str | None:
    try:
        result = subprocess.run([interpreter, "-c", "import platform; print(platform.python_version())"],
                                capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _wheel_builder(version: str) -> Path:
    """A virtualenv of a host interpreter of exactly the image's Python version: requirements'
    markers (redis: async-timeout for python_full_version < 3.11.3) must resolve as in the image."""
    venv = build.cache_root() / "wheel-builder" / f"python-{version}"
    python = venv / "bin" / "python"
    if python.exists() and _python_version(str(python)) == version:
        return python
    major_minor = ".".join(version.split(".")[:2])
    candidates = [sys.executable, "/usr/bin/python3", shutil.which(f"python{major_minor}") or "",
                  shutil.which("python3") or ""]
    interpreter = next((c for c in candidates if c and _python_version(c) == version), None)
    if interpreter is None:
        log = _logs_dir() / "wheel-builder.log"
        log.write_text(f"the images run Python {version} (Debian {DEBIAN_SUITE}'s python3) and their wheels are "
                       f"resolved by a host interpreter of that exact version; none of {candidates} is.\n"
                       f"On Debian {DEBIAN_SUITE}: apt-get install python3 python3-venv\n")
        raise ImageBuildError("wheel-builder", log)
    shutil.rmtree(venv, ignore_errors=True)
    _run_step("wheel-builder", [interpreter, "-m", "venv", str(venv)], quiet=True)
    return python


def _ensure_wheels(wheels: Wheels, python_version: str, allow_build: bool) -> Path:
    """The wheels of a requirement set, built once on the host (the only step with network)."""
    directory = _wheels_root() / f"{wheels.name}-{digest_of(wheels_inputs(wheels, python_version))[:16]}"
    if directory.is_dir():
        return directory
    if not allow_build:
        raise _Missing(f"wheels {wheels.name}")
    python = _wheel_builder(python_version)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{wheels.name}-", dir=directory.parent))
    try:
        requirements = staging / "requirements.txt"
        requirements.write_text("\n".join(wheels.requirements) + "\n")
        _run_step(f"{wheels.name}-wheels",
                  [str(python), "-m", "pip", "wheel", "--quiet", "--progress-bar", "off", "--disable-pip-version-check",
                   "--wheel-dir", str(staging / "wheels"), "-r", str(requirements)])
        os.replace(staging / "wheels", directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _wheel_entries(directory: Path) -> list[FileEntry]:
    return [FileEntry(p.name, _sha256_file(p), False) for p in sorted(directory.glob("*.whl"))]


# --- the private dockerd ---------------------------------------------------------------------


def _socket_dir(root: Path) -> Path:
    """Where the daemons' unix sockets go: the cache when its path is short enough."""
    if len(str(root / "containerd.sock.ttrpc")) < UNIX_SOCKET_LIMIT:
        return root
    return Path("/tmp") / f"celery-operator-docker-{hashlib.sha256(str(root).encode()).hexdigest()[:12]}"


def _containerd_config(root: Path, sockets: Path) -> str:
    # Its own everything: no other containerd (the host's, a node's) is ever used or touched. The
    # CRI plugin is off: dockerd needs containerd only to run containers.
    return "\n".join([
        "version = 2",
        f'root = "{root / "containerd" / "root"}"',
        f'state = "{root / "containerd" / "state"}"',
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
        "[grpc]",
        f'  address = "{sockets / "containerd.sock"}"',
        "[ttrpc]",
        f'  address = "{sockets / "containerd.sock.ttrpc"}"',
        "[debug]",
        '  address = ""',
        '[plugins."io.containerd.internal.v1.opt"]',
        f'  path = "{root / "containerd" / "opt"}"',
        "",
    ])


def _dockerd_argv(root: Path, sockets: Path) -> list[str]:
    # dockerd 20.10 uses /run/containerd/containerd.sock whenever that socket exists, so it is
    # always handed ours. No bridge, iptables, masquerading or forwarding: host networking stays as
    # it is (builds run with --network none, test containers with --network none).
    return [
        "dockerd",
        "--host", f"unix://{sockets / 'docker.sock'}",
        "--containerd", str(sockets / "containerd.sock"),
        "--data-root", str(root / "data"),
        "--exec-root", str(root / "exec"),
        "--pidfile", str(root / "dockerd.pid"),
        "--config-file", str(root / "daemon.json"),
        "--iptables=false", "--ip-masq=false", "--ip-forward=false", "--bridge=none",
        "--userland-proxy=false",
        "--oom-score-adjust=0",  # this sandbox refuses a lower oom_score_adj
    ]


def _process_alive(pid: int) -> bool:
    """True while the process runs (a zombie, exited but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _stop_pid(pid: int, timeout: float = 30) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _process_alive(pid):
        time.sleep(0.05)
    if _process_alive(pid):
        os.kill(pid, signal.SIGKILL)


def _stop_leftover(pidfile: Path, marker: str) -> None:
    """A daemon left running by a builder that died: stop it if the pid file's process is ours."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        pidfile.unlink(missing_ok=True)
        return
    if marker in cmdline:
        _log(f"stopping a leftover daemon (pid {pid}) from an interrupted build")
        _stop_pid(pid)
    pidfile.unlink(missing_ok=True)


def _daemon(argv: list[str], log: Path) -> subprocess.Popen:
    # A session of its own: a Ctrl-C meant for the build does not kill the daemon before the
    # build stops it (a daemon left by a killed build is stopped by the next one).
    with log.open("w") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


class PrivateDocker:
    """A dockerd with its own containerd, data and sockets under the cache, running only while a
    `with` block builds. Builders are serialized by the lock in images_dir()."""

    def __init__(self) -> None:
        self.root = _docker_root()
        self.sockets = _socket_dir(self.root)
        self._containerd: subprocess.Popen | None = None
        self._dockerd: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, DOCKER_HOST=f"unix://{self.sockets / 'docker.sock'}", DOCKER_BUILDKIT="1",
                    DOCKER_CONFIG=str(self.root / "client"))

    def __enter__(self) -> "PrivateDocker":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _start(self) -> None:
        started = time.monotonic()
        for directory in (self.root, self.sockets, self.root / "client"):
            directory.mkdir(parents=True, exist_ok=True)
        _stop_leftover(self.root / "dockerd.pid", str(self.root / "data"))
        _stop_leftover(self.root / "containerd.pid", str(self.root / "containerd.toml"))
        config = self.root / "containerd.toml"
        config.write_text(_containerd_config(self.root, self.sockets))
        (self.root / "daemon.json").write_text(json.dumps({"deprecated-key-path": str(self.root / "key.json")}))
        self._containerd = _daemon(["containerd", "--config", str(config)], _logs_dir() / "containerd.log")
        (self.root / "containerd.pid").write_text(str(self._containerd.pid))
        self._wait_until("containerd", ["ctr", "--address", str(self.sockets / "containerd.sock"), "version"],
                         self._containerd)
        self._dockerd = _daemon(_dockerd_argv(self.root, self.sockets), _logs_dir() / "dockerd.log")
        self._wait_until("dockerd", [DOCKER, "version"], self._dockerd)
        _log(f"private dockerd up in {time.monotonic() - started:.1f}s")

    def _wait_until(self, name: str, probe: list[str], process: subprocess.Popen, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if subprocess.run(probe, env=self.env, capture_output=True, timeout=30).returncode == 0:
                return
            time.sleep(0.2)
        raise ImageBuildError(f"{name}-start", _logs_dir() / f"{name}.log")

    def stop(self) -> None:
        if self._dockerd is not None:
            _stop_pid(self._dockerd.pid)
            self._dockerd.wait()
            self._dockerd = None
        if self._containerd is not None:
            _stop_pid(self._containerd.pid)
            self._containerd.wait()
            self._containerd = None
            (self.root / "containerd.pid").unlink(missing_ok=True)

    def run(self, step: str, *args: str, stdin: int | None = None, quiet: bool = False) -> None:
        _run_step(step, [DOCKER, *args], env=self.env, stdin=stdin, quiet=quiet)

    def output(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True, timeout=600)

    def image_id(self, reference: str) -> str | None:
        result = self.output("image", "inspect", "--format", "{{.Id}}", reference)
        return result.stdout.strip() if result.returncode == 0 else None

    def ensure_loaded(self, image: Image) -> None:
        """Put a cached image into this daemon (its data root may have been pruned or be older)."""
        if self.image_id(image.reference) != read_record(image).image_id:
            self.run(f"{image.key}-load", "load", "--input", str(image.archive), quiet=True)


# --- builders ----------------------------------------------------------------------------------


def _unmount_below(directory: Path) -> None:
    """Unmount whatever an interrupted debootstrap left mounted inside its target (/proc, /sys)."""
    prefix = str(directory.resolve()) + "/"
    mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    for mountpoint in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", mountpoint], check=False, capture_output=True)


def _remove_tree(directory: Path) -> None:
    if directory.exists():
        _unmount_below(directory)
        shutil.rmtree(directory, ignore_errors=True)


def _tidy_rootfs(rootfs: Path) -> None:
    """Leave out what debootstrap copies from the host or keeps from the install: the runtime
    provides /etc/hosts, resolv.conf and the hostname."""
    for name in ("etc/resolv.conf", "etc/hostname"):
        (rootfs / name).unlink(missing_ok=True)
    (rootfs / "etc" / "hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    for directory in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
        for path in (rootfs / directory).glob("*"):
            if path.is_file() and path.name != "lock":
                path.unlink()


class _Builder:
    """Resolves images in dependency order: finds each in the cache, or (when allowed) builds it
    and whatever it needs, starting the private dockerd on the first build."""

    def __init__(self, allow_build: bool) -> None:
        self.allow_build = allow_build
        self.recipes = recipes()
        self.resolved: dict[str, Image] = {}
        self._docker: PrivateDocker | None = None
        self._compiler = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="compile")
        self._compiles: dict[str, concurrent.futures.Future[tuple[Path, float]]] = {}

    def close(self) -> None:
        self._compiler.shutdown(wait=True, cancel_futures=True)
        if self._docker is not None:
            try:
                self._docker.run("prune-images", "image", "prune", "--force", quiet=True)
                self._docker.run("prune-cache", "builder", "prune", "--force", "--keep-storage", "4GB", quiet=True)
            finally:
                self._docker.stop()
                self._docker = None

    def start_compiles(self, keys: Iterable[str]) -> None:
        """Compile the Go binaries of images that will be built on a second thread, so that these
        CPU-bound compiles overlap debootstrap's downloads and the docker builds."""
        for key in keys:
            recipe = self.recipes[key]
            if not (isinstance(recipe, Dockerfile) and isinstance(recipe.binary, (GoBinary, KedaBinaries))):
                continue
            identity = _binary_identity(recipe.binary)
            if not _cached(key, recipe.reference, digest_of(self._inputs(recipe, None, [], None, identity))):
                self._compiles[key] = self._compiler.submit(_timed_binary, recipe.binary, identity)

    def _binary(self, recipe: Dockerfile, identity: Mapping[str, str]) -> tuple[Path, float]:
        """The binary, and how long a compile on the second thread took (the image's build time
        includes it; a compile in line is timed with the image anyway)."""
        assert recipe.binary is not None
        compiling = self._compiles.get(recipe.key)
        return compiling.result() if compiling else (_ensure_binary(recipe.binary, identity), 0.0)

    @staticmethod
    def _inputs(recipe: Dockerfile, base: Image | None, context: Sequence[FileEntry], wheels_dir: Path | None,
                binary_identity: Mapping[str, str] | None) -> dict[str, object]:
        return dockerfile_inputs(
            recipe, dockerfile_sha256=_sha256_file(recipe.dockerfile), context=context,
            base_image_id=read_record(base).image_id if base else None,
            wheels=_wheel_entries(wheels_dir) if wheels_dir else [], binary=binary_identity)

    def docker(self) -> PrivateDocker:
        if self._docker is None:
            self._docker = PrivateDocker().__enter__()
        return self._docker

    def image(self, key: str) -> Image:
        if key not in self.resolved:
            recipe = self.recipes[key]
            if isinstance(recipe, Rootfs):
                self.resolved[key] = self._rootfs_image(recipe)
            else:
                self.resolved[key] = self._dockerfile_image(recipe)
        return self.resolved[key]

    def _cached_or_refuse(self, recipe: Recipe, digest: str) -> Image | None:
        """The cached image of these inputs; None when it must be built, _Missing when it may not."""
        found = _cached(recipe.key, recipe.reference, digest)
        if found is None and not self.allow_build:
            raise _Missing(recipe.key)
        return found

    def _rootfs_image(self, recipe: Rootfs) -> Image:
        inputs = rootfs_inputs(recipe)
        digest = digest_of(inputs)
        found = self._cached_or_refuse(recipe, digest)
        if found:
            return found
        started = time.monotonic()
        work = images_dir() / "work" / recipe.key
        _remove_tree(work)
        rootfs = work / "rootfs"
        rootfs.mkdir(parents=True)
        debs = build.cache_root() / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        try:
            _run_step(f"{recipe.key}-debootstrap",
                      ["debootstrap", "--variant=minbase", f"--include={','.join(recipe.packages)}",
                       f"--cache-dir={debs}", DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR])
            _tidy_rootfs(rootfs)
            python = _rootfs_python(rootfs) if "python3" in recipe.packages else None
            tarball = work / "rootfs.tar"
            _run_step(f"{recipe.key}-tar", ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs),
                                            "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
                                            "-cf", str(tarball), "."], quiet=True)
            docker = self.docker()
            changes = [arg for change in recipe.changes for arg in ("--change", change)]
            with tarball.open("rb") as stream:
                docker.run(f"{recipe.key}-import", "import", *changes, "-", recipe.reference, stdin=stream.fileno())
            return self._save(recipe.key, recipe.reference, digest, inputs, started, python=python)
        finally:
            _remove_tree(work)

    def _dockerfile_image(self, recipe: Dockerfile) -> Image:
        base = self.image(recipe.base) if recipe.base else None
        started = time.monotonic()  # the image's own build time: its wheels or binary, not its base
        context = context_files(recipe.context) if recipe.context else []
        wheels_dir = _ensure_wheels(recipe.wheels, _base_python(base, recipe), self.allow_build) if recipe.wheels \
            else None
        binary_identity = _binary_identity(recipe.binary) if recipe.binary else None
        inputs = self._inputs(recipe, base, context, wheels_dir, binary_identity)
        digest = digest_of(inputs)
        found = self._cached_or_refuse(recipe, digest)
        if found:
            return found
        binary_path, compile_seconds = self._binary(recipe, binary_identity) if binary_identity else (None, 0.0)
        if compile_seconds:  # compiled on the second thread: count the compile, not the wait for it
            started = time.monotonic() - compile_seconds
        work = images_dir() / "work" / recipe.key
        _remove_tree(work)
        try:
            stage = _stage_context(work, recipe, context, wheels_dir, binary_path)
            docker = self.docker()
            if base:
                docker.ensure_loaded(base)
            build_args = list(recipe.build_args) + ([("BASE", base.reference)] if base else [])
            docker.run(f"{recipe.key}-build", "build", "--network", "none", "--progress", "plain",
                       "--tag", recipe.reference, "--file", str(stage / "Dockerfile"),
                       *[arg for name, value in build_args for arg in ("--build-arg", f"{name}={value}")],
                       str(stage))
            return self._save(recipe.key, recipe.reference, digest, inputs, started)
        finally:
            _remove_tree(work)

    def _save(self, key: str, reference: str, digest: str, inputs: Mapping[str, object], started: float,
              python: str | None = None) -> Image:
        docker = self.docker()
        archive = _archive_path(key, digest)
        partial = archive.with_name(f".{archive.name}.partial")
        docker.run(f"{key}-save", "save", "--output", str(partial), reference, quiet=True)
        image_id = docker.image_id(reference)
        if not image_id:
            raise ImageBuildError(f"{key}-save", _logs_dir() / f"{key}-save.log")
        record = BuildRecord(key=key, reference=reference, image_id=image_id, archive_bytes=partial.stat().st_size,
                             build_seconds=round(time.monotonic() - started, 1), inputs=dict(inputs),
                             python=python)
        _record_path(archive).write_text(json.dumps(record.__dict__, indent=1))
        os.replace(partial, archive)
        _prune_older_archives(key, archive)
        _log(f"{key}: {reference} built in {record.build_seconds:.0f}s ({record.archive_bytes / 1e6:.0f} MB)")
        return Image(key, reference, archive)


def _rootfs_python(rootfs: Path) -> str:
    step = "rootfs-python"
    result = subprocess.run(["chroot", str(rootfs), "python3", "-c", "import platform; print(platform.python_version())"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        log = _logs_dir() / f"{step}.log"
        log.write_text(result.stdout + result.stderr)
        raise ImageBuildError(step, log)
    return result.stdout.strip()


def _base_python(base: Image | None, recipe: Dockerfile) -> str:
    python = read_record(base).python if base else None
    if not python:
        raise ValueError(f"{recipe.key}: its wheels need a base image with python3")
    return python


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _stage_context(work: Path, recipe: Dockerfile, context: Sequence[FileEntry], wheels_dir: Path | None,
                   binary: Path | None) -> Path:
    """The build context exactly as keyed: the context's files, wheels/ and the binary, with the
    Dockerfile at its root (no .dockerignore applies)."""
    stage = work / "context"
    stage.mkdir(parents=True)
    shutil.copyfile(recipe.dockerfile, stage / "Dockerfile")
    if recipe.context:
        for entry in context:
            target = stage / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(recipe.context.root / entry.path, target)
    if wheels_dir:
        for wheel in wheels_dir.glob("*.whl"):
            _link_or_copy(wheel, stage / "wheels" / wheel.name)
    if binary and binary.is_dir():
        for item in binary.iterdir():
            shutil.copy2(item, stage / item.name)
    elif binary:
        shutil.copy2(binary, stage / binary.name)
    return stage


# --- API ---------------------------------------------------------------------------------------


def _ordered(keys: Iterable[str] | None) -> list[str]:
    wanted = list(IMAGE_KEYS if keys is None else keys)
    known = recipes()
    unknown = [key for key in wanted if key not in known]
    if unknown:
        raise ValueError(f"unknown image keys {unknown}; known: {', '.join(IMAGE_KEYS + OPTIONAL_IMAGE_KEYS)}")
    return wanted


def _resolve_all(keys: list[str], allow_build: bool) -> dict[str, Image]:
    builder = _Builder(allow_build)
    try:
        if allow_build:
            builder.start_compiles(keys)
        return {key: builder.image(key) for key in keys}
    finally:
        builder.close()


def build_images(keys: Iterable[str] | None = None) -> dict[str, Image]:
    """The images with these keys (default: all of IMAGE_KEYS), built when not cached."""
    wanted = _ordered(keys)
    try:
        return _resolve_all(wanted, allow_build=False)
    except _Missing:
        pass
    images_dir().mkdir(parents=True, exist_ok=True)
    with (images_dir() / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder waits, then finds what the first built
        return _resolve_all(wanted, allow_build=True)


def operator_chart_values() -> list[str]:
    """`helm install` arguments that run our chart from the images built here: the operator's
    own, and its defaults for the managed Redis and Flower (what an air-gapped cluster sets)."""
    built = build_images(["operator", "redis", "flower"])
    repository, tag = built["operator"].reference.rsplit(":", 1)
    # a new build keeps its tag: the pods' annotation names the build, so that `helm upgrade` of a
    # running release (make demo again after a change) rolls the operator onto it
    build = built["operator"].archive.stem.rsplit("-", 1)[-1]
    return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set-string", f"podAnnotations.devcluster\\.local/operator-build={build}",
            "--set", f"redis.image={built['redis'].reference}", "--set", f"flower.image={built['flower'].reference}"]


@contextmanager
def docker_with(images: Iterable[Image]) -> Iterator[PrivateDocker]:
    """The private dockerd with these images loaded, for running them (tests); holds the build lock."""
    images_dir().mkdir(parents=True, exist_ok=True)
    with (images_dir() / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with PrivateDocker() as docker:
            for image in images:
                docker.ensure_loaded(image)
            yield docker


def _human_size(size: int) -> str:
    return f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster images", description="build or find the cached images")
    parser.add_argument("keys", nargs="*", metavar="KEY",
                        help=f"some of: {', '.join(IMAGE_KEYS + OPTIONAL_IMAGE_KEYS)} (default: {', '.join(IMAGE_KEYS)})")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        images = build_images(args.keys or None)
    except (ImageBuildError, ValueError) as failure:
        print(str(failure), file=sys.stderr)
        return 1
    rows = [("KEY", "REFERENCE", "SIZE", "BUILD TIME")]
    for image in images.values():
        record = read_record(image)
        rows.append((image.key, image.reference, _human_size(record.archive_bytes), f"{record.build_seconds:.0f}s"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    elapsed = time.monotonic() - started
    if elapsed > 5:
        _log(f"finished in {elapsed:.0f}s")
    return 0
