"""Run the operator as a subprocess against the devcluster, exactly as a user runs it."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devcluster import images
from tests.helpers import clusterdns
from tests.helpers.devcluster import DevCluster
from tests.helpers.processes import free_port
from tests.helpers.waiting import wait_for

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CRDS = PROJECT_ROOT / "crds"


def apply_crds(cluster: DevCluster) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    for path in sorted(CRDS.glob("*.yaml")):
        cluster.kubectl("wait", "--for=condition=Established", "-f", str(path), "--timeout=60s")


@dataclass
class OperatorProcess:
    process: subprocess.Popen
    log: Path
    health_url: str
    metrics_url: str

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.health_url, timeout=1) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def local_image_settings() -> dict[str, str]:
    """The operator-wide default images pointed at the ones devcluster built and loaded (an
    air-gapped cluster's settings: nothing is pulled)."""
    built = images.build_images(["redis", "flower", "operator"])
    return {"CELERY_OPERATOR_REDIS_IMAGE": built["redis"].reference,
            "CELERY_OPERATOR_FLOWER_IMAGE": built["flower"].reference,
            "CELERY_OPERATOR_BEAT_IMAGE": built["operator"].reference}


PYTHON_ENTRY = (sys.executable, "-m", "celery_operator")
KOPF_ENTRY = (sys.executable, "-m", "kopf", "run", "-m", "celery_operator", "--standalone")


def start_operator(cluster: DevCluster, log: Path, extra_env: dict[str, str] | None = None,
                   args: tuple[str, ...] = ("--all-namespaces",),
                   entry: tuple[str, ...] = PYTHON_ENTRY) -> OperatorProcess:
    port, metrics_port = free_port(), free_port()
    health_url = f"http://127.0.0.1:{port}/healthz"
    env = {**cluster.env(), **local_image_settings(), "CELERY_OPERATOR_RESYNC_SECONDS": "1", "PYTHONUNBUFFERED": "1",
           "CELERY_OPERATOR_METRICS_PORT": str(metrics_port), "CELERY_OPERATOR_METRICS_ADDRESS": "127.0.0.1",
           # this process connects to the TaskQueues' Redis from the host: their NetworkPolicies let
           # the node network in (so do the tests that send tasks or read queues from the host)
           "CELERY_OPERATOR_SOURCE_CIDRS": cluster.node_network,
           **(extra_env or {})}
    handle = log.open("w")
    process = subprocess.Popen(
        clusterdns.wrap_for(cluster, [*entry, *args, "--liveness", health_url]),
        stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT,
    )
    running = OperatorProcess(process=process, log=log, health_url=health_url,
                              metrics_url=f"http://127.0.0.1:{metrics_port}/metrics")

    def started() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"operator exited with {process.returncode}:\n{running.log_text()[-4000:]}")
        return running.healthy()

    wait_for(started, 60, "the operator's health endpoint")
    return running
