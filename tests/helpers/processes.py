"""Real redis-server and celery worker processes for integration and end-to-end tests.

Every process is started in its own session and stopped by its own pid, so a test never signals
anything it did not start.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from devcluster.ports import free_port  # noqa: F401  (re-exported for the tests)

from tests.helpers import clusterdns
from tests.helpers.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_DIR = REPO_ROOT / "app"


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def stop_process(process: subprocess.Popen, grace: float) -> int:
    """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


@dataclass
class RedisServer:
    process: subprocess.Popen
    port: int
    log: Path
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        stop_process(self.process, grace=10)


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def start_redis(workdir: Path, timeout: float = 15, port: int | None = None,
                extra_args: Sequence[str] = (), host: str = "127.0.0.1", persistent: bool = False) -> RedisServer:
    """A throwaway redis-server on `host` (a free port unless given), without persistence. Pods
    reach a `host` the cluster made on this machine: its bridge address (DevCluster.host_ip).
    `persistent`: an append-only file in `workdir`, fsynced on every write, so that a server stopped
    and started again on the same `workdir` and port comes back with every key it held."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("redis-server not found: apt-get install -y redis-server")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = workdir / f"redis-{port}.log"
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else ["--appendonly", "no"]
    with log.open("ab") as out:  # a restart on the same workdir appends to the first run's log
        process = subprocess.Popen(
            # no password, so protected mode would refuse the pods' (non-loopback) connections
            [binary, "--port", str(port), "--bind", host, "--protected-mode", "no", "--save", "",
             *persistence, "--dir", str(workdir), *extra_args],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    server = RedisServer(process=process, port=port, log=log, host=host)

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}:\n{log_tail(log)}")
        try:
            with server.client() as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        wait_for(answers, timeout, f"redis-server on port {port}")
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class CeleryWorker:
    process: subprocess.Popen
    log: Path
    argv: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return log_tail(self.log, lines=200)

    def stop(self, grace: float = 30) -> int:
        """SIGTERM to the main process only: Celery's warm shutdown."""
        return stop_process(self.process, grace=grace)


def celery_environment(broker_url: str, result_backend: str | None = None,
                       extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["CELERY_BROKER_URL"] = broker_url
    if result_backend is not None:
        env["CELERY_RESULT_BACKEND"] = result_backend
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def start_worker(
    *,
    queues: Sequence[str],
    broker_url: str,
    log: Path,
    result_backend: str | None = None,
    app: str = "myproject",
    cwd: Path = APP_DIR,
    concurrency: int = 2,
    pool: str = "prefork",
    hostname: str | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> CeleryWorker:
    """`celery -A <app> worker -Q <queues>` from `cwd` (the sample app by default), exec form."""
    argv = [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "-Q", ",".join(queues),
        "--hostname", hostname or f"{queues[0]}@%h",
        "--concurrency", str(concurrency), "--pool", pool,
        "--prefetch-multiplier", "1",
        "--without-gossip", "--without-mingle",
        "--loglevel", "INFO",
        *extra_args,
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            clusterdns.wrap(argv), cwd=cwd, env=celery_environment(broker_url, result_backend, env),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    return CeleryWorker(process=process, log=log, argv=argv)


def run_in_app(code: str, *, broker_url: str, result_backend: str | None = None,
               cwd: Path = APP_DIR, timeout: float = 60) -> str:
    """Run Python `code` in the sample app's directory (as a producer would) and return its stdout."""
    completed = subprocess.run(
        clusterdns.wrap([sys.executable, "-c", code]), cwd=cwd, env=celery_environment(broker_url, result_backend),
        capture_output=True, text=True, timeout=timeout,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"producer failed ({completed.returncode}):\n{completed.stderr}")
    return completed.stdout
