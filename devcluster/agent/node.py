"""The Node object: registration with this machine's capacity, a Lease in kube-node-lease
renewed every 10 s (the node controller's liveness signal), and a status heartbeat.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from devcluster.agent.kubeapi import ApiError, KubeClient
from devcluster.agent.procs import BOOT_ID
from devcluster.agent.status import timestamp

log = logging.getLogger(__name__)

LEASE_DURATION_SECONDS = 40
LEASE_RENEW_SECONDS = 10
STATUS_REPORT_SECONDS = 60
MAX_PODS = 500
KUBELET_PORT = 10250
RUNTIME_VERSION = "devcluster://0.1.0"


def micro_time(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1e6):06d}Z"


def _memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _os_image() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def _machine_id() -> str:
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            return Path(candidate).read_text().strip()
        except OSError:
            continue
    return ""


def _architecture() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def machine_capacity(storage_path: Path, cpu_override: str | None = None) -> dict[str, str]:
    memory = _memory_bytes()
    storage = shutil.disk_usage(storage_path).total
    return {
        "cpu": cpu_override or str(os.cpu_count() or 1),
        "memory": f"{memory // 1024}Ki",
        "ephemeral-storage": f"{storage // 1024}Ki",
        "pods": str(MAX_PODS),
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
    }


def allocatable_from(capacity: dict[str, str]) -> dict[str, str]:
    """The kubelet's defaults: memory minus the 100Mi eviction threshold, 90% of the storage."""
    allocatable = dict(capacity)
    memory_ki = int(capacity["memory"][:-2])
    allocatable["memory"] = f"{max(0, memory_ki - 100 * 1024)}Ki"
    allocatable["ephemeral-storage"] = str(int(capacity["ephemeral-storage"][:-2]) * 1024 * 9 // 10)
    return allocatable


def _conditions(now: str, since: str) -> list[dict[str, Any]]:
    def condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return {"type": kind, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": now, "lastTransitionTime": since}

    return [
        condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
        condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
        condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
    ]


class NodeRegistration:
    def __init__(self, client: KubeClient, name: str, host_ip: str, capacity: dict[str, str],
                 kubelet_version: str) -> None:
        self.client = client
        self.name = name
        self.host_ip = host_ip
        self.capacity = capacity
        self.allocatable = allocatable_from(capacity)
        self.kubelet_version = kubelet_version
        self.uid: str | None = None
        self.ready_since = timestamp(time.time())

    def _status(self) -> dict[str, Any]:
        now = timestamp(time.time())
        return {
            "capacity": self.capacity,
            "allocatable": self.allocatable,
            "conditions": _conditions(now, self.ready_since),
            # no Hostname address: the API server would dial the node by that name, which only
            # this node's /etc/hosts could resolve, and two clusters may share a node name
            "addresses": [{"type": "InternalIP", "address": self.host_ip}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
            "nodeInfo": {
                "machineID": _machine_id(), "systemUUID": _machine_id(), "bootID": BOOT_ID,
                "kernelVersion": platform.release(), "osImage": _os_image(),
                "containerRuntimeVersion": RUNTIME_VERSION, "kubeletVersion": self.kubelet_version,
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": _architecture(),
            },
        }

    def _labels(self) -> dict[str, str]:
        return {
            "kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": _architecture(),
            "beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": _architecture(),
        }

    async def register(self) -> None:
        """Create the Node (or take over an existing one of that name) and report it Ready."""
        body = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.name, "labels": self._labels(),
                         "annotations": {"volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
            "spec": {},
        }
        try:
            created = await self.client.post("/api/v1/nodes", body)
            self.uid = created["metadata"]["uid"]
            log.info("registered node %s", self.name)
        except ApiError as failure:
            if failure.status != 409:
                raise
            existing = await self.client.patch(f"/api/v1/nodes/{self.name}", {"metadata": {"labels": self._labels()}})
            self.uid = existing["metadata"]["uid"]
            log.info("node %s already registered; taking it over", self.name)
        await self.report_status()

    async def report_status(self) -> None:
        # a merge patch replaces lists: addresses and conditions are exactly what this agent reports
        await self.client.patch(f"/api/v1/nodes/{self.name}/status", {"status": self._status()}, "merge")

    def _lease(self, now: float) -> dict[str, Any]:
        return {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": "kube-node-lease",
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.name,
                                              "uid": self.uid}]},
            "spec": {"holderIdentity": self.name, "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                     "renewTime": micro_time(now)},
        }

    async def renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        now = time.time()
        try:
            await self.client.patch(path, {"spec": {"holderIdentity": self.name, "renewTime": micro_time(now),
                                                    "leaseDurationSeconds": LEASE_DURATION_SECONDS}}, "merge")
        except ApiError as failure:
            if failure.status != 404:
                raise
            await self.client.post("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", self._lease(now))

    async def keep_alive(self) -> None:
        """Renew the lease every 10 s and report status every minute, for ever."""
        last_status = time.monotonic()
        while True:
            try:
                await self.renew_lease()
                if time.monotonic() - last_status >= STATUS_REPORT_SECONDS:
                    await self.report_status()
                    last_status = time.monotonic()
            except asyncio.CancelledError:
                raise
            except ApiError as failure:
                if failure.status == 404 and "nodes" in str(failure):
                    await self.register()
                else:
                    log.warning("node heartbeat failed: %s", failure)
            except Exception as failure:
                log.warning("node heartbeat failed: %s", failure)
            await asyncio.sleep(LEASE_RENEW_SECONDS)
