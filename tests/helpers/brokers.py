"""Brokers and workers for tests/integration/test_broker.py: a password-protected redis-server, a
RabbitMQ node of its own, a TCP listener that never answers, and gated tasks.

Every server runs on free ports in the test's temporary directory, in its own session, and is
stopped by its own pid. The test module wraps these in its fixtures.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import kombu
import pytest
import redis
from celery import Celery

from celery_operator.broker.arrivals import ARRIVALS_CLIENT
from devcluster.ports import free_port
from tests.helpers.broker_app import HOLD
from tests.helpers.processes import (
    REPO_ROOT,
    CeleryWorker,
    log_tail,
    start_worker,
    stop_process,
)
from tests.helpers.waiting import wait_for


REDIS_PASSWORD = "s3cret-Redis-pw"
RABBIT_USER = "operator"
RABBIT_PASSWORD = "s3cret-Amqp-pw"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian package rabbitmq-server
EPMD = "epmd"


# --- Redis --------------------------------------------------------------------------------------


@dataclass
class RedisBroker:
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    host: str = "127.0.0.1"  # pods reach the cluster's bridge address (DevCluster.host_ip)

    @property
    def url(self) -> str:
        return f"redis://:{REDIS_PASSWORD}@{self.host}:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def start(self, timeout: float = 15) -> None:
        """Start (again, on the same port after stop())."""
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install -y redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", self.host, "--save", "", "--appendonly", "no",
                 "--requirepass", REDIS_PASSWORD, "--dir", str(self.workdir)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )

        def answers() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited {self.process.returncode}:\n{log_tail(self.log)}")
            with self.client() as client:
                return bool(client.ping())

        wait_for(answers, timeout, f"redis-server on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, grace=10)
            self.process = None


# --- RabbitMQ -----------------------------------------------------------------------------------


@dataclass
class RabbitBroker:
    workdir: Path
    port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    epmd_port: int = field(default_factory=free_port)
    node: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:8]}@localhost")
    process: subprocess.Popen | None = None
    epmd: subprocess.Popen | None = None
    host: str = "127.0.0.1"  # pods reach the cluster's bridge address (DevCluster.host_ip)

    @property
    def url(self) -> str:
        return f"amqp://{RABBIT_USER}:{RABBIT_PASSWORD}@{self.host}:{self.port}//"

    @property
    def log(self) -> Path:
        return self.workdir / "rabbitmq-server.out"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HOME=str(self.workdir),  # the Erlang cookie goes here
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS=self.host,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_MNESIA_BASE=str(self.workdir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.workdir / "log"),
            RABBITMQ_CONFIG_FILE=str(self.workdir / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.workdir / "enabled_plugins"),
            RABBITMQ_CONF_ENV_FILE=str(self.workdir / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(self.workdir / "rabbitmq.pid"),
        )
        return env

    def start(self, timeout: float = 90) -> None:
        if not os.access(RABBITMQ_SERVER, os.X_OK) or shutil.which(EPMD) is None:
            pytest.fail(
                f"RabbitMQ is not installed ({RABBITMQ_SERVER} and epmd missing): "
                "apt-get install -y rabbitmq-server"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "rabbitmq.conf").write_text(
            f"default_user = {RABBIT_USER}\ndefault_pass = {RABBIT_PASSWORD}\nloopback_users = none\n"
            "default_vhost = /\n"
        )
        (self.workdir / "enabled_plugins").write_text("[].\n")
        (self.workdir / "rabbitmq-env.conf").write_text("")
        env = self.environment()
        # Our own epmd in the foreground (RabbitMQ would otherwise daemonize one that outlives the test).
        self.epmd = subprocess.Popen(
            [EPMD, "-port", str(self.epmd_port)], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [RABBITMQ_SERVER], env=env, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        deadline = time.monotonic() + timeout
        while True:  # not wait_for: a node that exited must fail the start at once, with its log
            code = self.process.poll()
            if code is not None:
                self.stop()
                raise RuntimeError(f"rabbitmq-server exited {code}:\n{log_tail(self.log)}")
            try:
                with kombu.Connection(self.url, connect_timeout=2) as connection:
                    connection.ensure_connection(max_retries=0)
                    return
            except (OSError, kombu.exceptions.OperationalError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"rabbitmq-server {self.node} not answering on {self.port} after {timeout}s")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.process is not None:
            # SIGTERM to the start script: RabbitMQ stops the node cleanly (checked: ~1 s).
            stop_process(self.process, grace=30)
            self.process = None
        if self.epmd is not None:
            stop_process(self.epmd, grace=5)
            self.epmd = None


# --- a listener that accepts TCP connections and never says a word ------------------------------


@contextmanager
def silent_listener() -> Iterator[int]:
    """A port whose TCP handshake succeeds (the kernel completes it) but that never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


# --- gated tasks and workers --------------------------------------------------------------------


@dataclass
class Gate:
    """Tasks `broker_app.hold` started under this directory wait until `release()`."""

    directory: Path

    def started(self) -> dict[str, str]:
        """task id -> node name of the worker running it."""
        return {
            path.name.removeprefix("started-"): path.read_text()
            for path in self.directory.glob("started-*")
            if not path.suffix
        }

    def release(self) -> None:
        (self.directory / "release").touch()


def producer(url: str, **conf: object) -> Celery:
    """An app that sends `broker_app.hold` by name, as a web app would."""
    app = Celery("producer", broker=url, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=False, task_ignore_result=True, **conf)
    return app


def send_holds(app: Celery, gate: Gate, queue: str, count: int, **options: object) -> None:
    with app.connection_for_write() as connection:
        for _ in range(count):
            app.send_task(HOLD, args=[str(gate.directory)], queue=queue, connection=connection, **options)


def start_test_worker(url: str, queue: str, pod: str, log_dir: Path, *, pool: str = "prefork",
                      concurrency: int = 2) -> CeleryWorker:
    """A worker named the operator's way (`<queue>@<pod>`) running tests.helpers.broker_app."""
    return start_worker(
        queues=[queue], broker_url=url, log=log_dir / f"worker-{queue}-{pod}.log",
        app="tests.helpers.broker_app", cwd=REPO_ROOT, concurrency=concurrency, pool=pool,
        hostname=f"{queue}@{pod}",
    )


def arrival_subscriptions(url: str) -> int:
    """The operator's pattern subscriptions to the queues it watches on a Redis, from CLIENT LIST (its arrival
    watcher names its connection)."""
    return sum(int(client["psub"]) for client in redis.Redis.from_url(url).client_list()
               if client["name"] == ARRIVALS_CLIENT)
