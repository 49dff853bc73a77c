"""What every pod worker shares: the API client, the node's identity and addresses, the
Services known so far, and an event recorder."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from devcluster.agent import layout
from devcluster.agent.addresses import PodAddressPool
from devcluster.agent.kubeapi import KubeClient, KubeConfig
from devcluster.agent.status import timestamp

log = logging.getLogger(__name__)

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class EventSeries:
    """An event already written, repeated `count` times so far."""

    name: str
    namespace: str
    first_timestamp: str
    count: int
    sent_count: int
    sent_at: float


class EventRecorder:
    """Core/v1 Events as the kubelet writes them (source component `kubelet`), fire and forget.
    Like the kubelet's event correlator, a repeated event (same pod, container, reason and message)
    updates the count of the event written first instead of creating another one, at most every
    SERIES_UPDATE_SECONDS; after SERIES_WINDOW_SECONDS a new event is started."""

    SERIES_UPDATE_SECONDS = 30.0
    SERIES_WINDOW_SECONDS = 600.0
    MAX_SERIES = 2000

    def __init__(self, client: KubeClient, node_name: str, concurrency: int = 8) -> None:
        self.client = client
        self.node_name = node_name
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task] = set()
        self._series: dict[tuple, EventSeries] = {}

    def record(self, pod: Mapping[str, Any], kind: str, reason: str, message: str,
               container: str | None = None, init: bool = False) -> None:
        metadata = pod["metadata"]
        field_path = f"spec.{'initContainers' if init else 'containers'}{{{container}}}" if container else None
        key = (metadata["uid"], field_path, kind, reason, message)
        now = time.time()
        series = self._series.get(key)
        if series is not None and now - series.sent_at < self.SERIES_WINDOW_SECONDS:
            series.count += 1
            if now - series.sent_at >= self.SERIES_UPDATE_SECONDS:
                series.sent_at, series.sent_count = now, series.count
                self._spawn(self._update(series, now))
            return
        if len(self._series) >= self.MAX_SERIES:
            self._forget_old(now)
        name = f"{metadata['name']}.{uuid.uuid4().hex[:16]}"
        self._series[key] = EventSeries(name, metadata["namespace"], timestamp(now), 1, 1, now)
        self._spawn(self._create(pod, name, kind, reason, message, field_path, now))

    def _forget_old(self, now: float) -> None:
        for key, series in list(self._series.items()):
            if now - series.sent_at >= self.SERIES_WINDOW_SECONDS:
                del self._series[key]
        while len(self._series) >= self.MAX_SERIES:
            del self._series[next(iter(self._series))]

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _create(self, pod: Mapping[str, Any], name: str, kind: str, reason: str, message: str,
                      field_path: str | None, now: float) -> None:
        metadata = pod["metadata"]
        involved: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "namespace": metadata["namespace"],
                                    "name": metadata["name"], "uid": metadata["uid"]}
        if field_path:
            involved["fieldPath"] = field_path
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": metadata["namespace"]},
            "involvedObject": involved, "reason": reason, "message": message[:1024], "type": kind,
            "source": {"component": "kubelet", "host": self.node_name},
            "firstTimestamp": timestamp(now), "lastTimestamp": timestamp(now), "count": 1,
            "reportingComponent": "kubelet", "reportingInstance": self.node_name,
        }
        await self._send("POST", f"/api/v1/namespaces/{metadata['namespace']}/events", body, reason)

    async def _update(self, series: EventSeries, now: float) -> None:
        body = {"count": series.sent_count, "lastTimestamp": timestamp(now)}
        await self._send("PATCH", f"/api/v1/namespaces/{series.namespace}/events/{series.name}", body, "update")

    async def _send(self, method: str, path: str, body: dict, what: str) -> None:
        async with self._slots:
            try:
                if method == "POST":
                    await self.client.post(path, body)
                else:
                    await self.client.patch(path, body, "merge")
            except Exception as failure:  # events are best effort, like the kubelet's
                log.debug("event %s not recorded at %s: %s", what, path, failure)


@dataclass
class AgentContext:
    client: KubeClient
    kubeconfig: KubeConfig
    node_name: str
    cluster_dir: Path
    project_root: Path
    pool: PodAddressPool
    events: EventRecorder
    allocatable: dict[str, str] = field(default_factory=dict)
    services_in: Callable[[str], list[dict]] = lambda namespace: []

    @property
    def host_ip(self) -> str:
        return self.pool.host_ip

    @property
    def pods_dir(self) -> Path:
        return self.cluster_dir / "pods"

    def pod_dir(self, namespace: str, name: str) -> Path:
        return layout.pod_dir(self.cluster_dir, namespace, name)

    def base_path(self) -> str:
        venv_bin = self.project_root / ".venv" / "bin"
        if not venv_bin.is_dir():
            venv_bin = Path(sys.executable).parent
        return f"{venv_bin}:{SYSTEM_PATH}"

    def image_environment(self, hostname: str, home: Path) -> dict[str, str]:
        """What a container image would provide: PATH with the project's venv first, the sample
        app importable, a HOME of the pod's own, HOSTNAME = the pod's hostname."""
        return {
            "PATH": self.base_path(),
            "PYTHONPATH": str(self.project_root / "app"),
            "HOME": str(home),
            "HOSTNAME": hostname,
            "LANG": "C.UTF-8",
        }
