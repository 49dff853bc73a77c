"""The chart's operator replicas on a devcluster of a test's own: install, who holds the Lease,
which pod is which, and what each replica asked the API server (its audit log), for the HA test
(tests/e2e/test_operator_ha.py) and the takeover benchmark (bench/bench_operator_takeover.py)."""

from __future__ import annotations

import datetime
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devcluster import images
from tests.helpers import containers
from tests.helpers.devcluster import DevCluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "celery-operator"
RELEASE, RELEASE_NAMESPACE = "op", "celery-system"
LEASE = "op-celery-operator"  # the chart names the Lease after the Deployment
OPERATOR_PODS = "app.kubernetes.io/component=operator"
SERVICE_ACCOUNT = f"system:serviceaccount:{RELEASE_NAMESPACE}:op-celery-operator"
POD_NAME_KEY = "authentication.kubernetes.io/pod-name"  # in a bound token's user info
READS = frozenset({"get", "list", "watch"})


def install(devcluster: DevCluster, *values: str) -> None:
    """The chart with its defaults (two replicas), from the images built here, resyncing every 2 s."""
    devcluster.kubectl("create", "namespace", RELEASE_NAMESPACE)
    devcluster.helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "170s",
                    "--set", "config.resyncSeconds=2", *images.operator_chart_values(), *values, timeout=180)


def operator_pods(devcluster: DevCluster) -> dict[str, dict[str, Any]]:
    """Operator pods by name (those not being deleted)."""
    listing = json.loads(devcluster.kubectl("get", "pods", "-n", RELEASE_NAMESPACE, "-l", OPERATOR_PODS,
                                            "-o", "json").stdout)
    return {pod["metadata"]["name"]: pod for pod in listing["items"] if not pod["metadata"].get("deletionTimestamp")}


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def lease(devcluster: DevCluster) -> dict[str, Any] | None:
    result = devcluster.kubectl("get", "lease", LEASE, "-n", RELEASE_NAMESPACE, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def holder(devcluster: DevCluster) -> str:
    found = lease(devcluster)
    return (found or {}).get("spec", {}).get("holderIdentity") or ""


def renewed_since(devcluster: DevCluster, since: datetime.datetime) -> str | None:
    """The replica that renewed (or took) the Lease after `since`, if it is a running operator pod."""
    spec = (lease(devcluster) or {}).get("spec", {})
    renewed, leader = spec.get("renewTime"), spec.get("holderIdentity")
    if renewed and _when(renewed) > since and leader in operator_pods(devcluster):
        return leader
    return None


def pod_log(devcluster: DevCluster, pod: str, previous: bool = False) -> str:
    args = ["logs", "-n", RELEASE_NAMESPACE, pod, "--tail=-1", *(["--previous"] if previous else [])]
    result = devcluster.kubectl(*args, check=False)
    return result.stdout + result.stderr


def container_id(pod: dict[str, Any]) -> str:
    [status] = pod["status"]["containerStatuses"]
    return status["containerID"]


def signal_container(pod: dict[str, Any], signum: signal.Signals) -> int:
    """Send `signum` to the operator container's main process from the host (a SIGSTOP from
    inside the container's pid namespace would be dropped); its host pid."""
    pid = containers.host_pid(container_id(pod))
    os.kill(pid, signum)
    return pid


@dataclass(frozen=True)
class Request:
    pod: str
    verb: str
    resource: str
    namespace: str | None
    name: str | None
    at: datetime.datetime  # when the API server received it
    code: int

    @property
    def write(self) -> bool:
        return self.verb not in READS


def _when(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def requests(devcluster: DevCluster) -> list[Request]:
    """Every request of the chart's ServiceAccount in the audit log, with the pod it came from."""
    found = []
    with (devcluster.dir / "logs" / "audit.log").open() as log:
        for line in log:
            entry = json.loads(line)
            user = entry["user"]
            if user["username"] != SERVICE_ACCOUNT:
                continue
            ref = entry.get("objectRef") or {}
            resource = ref.get("resource") or entry["requestURI"].split("?")[0]
            if ref.get("subresource"):
                resource = f"{resource}/{ref['subresource']}"
            [pod] = user.get("extra", {}).get(POD_NAME_KEY, ["?"])
            found.append(Request(pod, entry["verb"], resource, ref.get("namespace"), ref.get("name"),
                                 _when(entry["requestReceivedTimestamp"]),
                                 (entry.get("responseStatus") or {}).get("code", 0)))
    return found


def first_write_after(devcluster: DevCluster, pod: str, since: datetime.datetime,
                      excluding: frozenset[str] = frozenset({"leases"})) -> Request | None:
    """The first write by `pod` received after `since`, other than to the Lease."""
    writes = [r for r in requests(devcluster) if r.pod == pod and r.write and r.at >= since
              and r.resource not in excluding]
    return min(writes, key=lambda r: r.at, default=None)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
