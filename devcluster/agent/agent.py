"""The node agent's main loop: register the Node, watch the pods bound to it and every Service,
run a worker per pod, proxy Services, and on SIGTERM stop without touching the pods."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, TypeVar

from devcluster.agent import addresses, procs
from devcluster.agent.addresses import PodAddressPool
from devcluster.agent.context import AgentContext, EventRecorder
from devcluster.agent.endpoints import Endpoint
from devcluster.agent.kubeapi import KubeClient, KubeConfig, Reflector, load_kubeconfig
from devcluster.agent.kubelet_api import KubeletApi
from devcluster.agent.node import KUBELET_PORT, NodeRegistration, machine_capacity
from devcluster.agent.pod_worker import PodWorker
from devcluster.agent.services import ServiceNetwork

log = logging.getLogger(__name__)

WORKER_RESTART_SECONDS = 5.0

T = TypeVar("T")


@dataclass(frozen=True)
class AgentSettings:
    cluster_dir: Path
    kubeconfig: Path
    node_name: str
    pod_network: str
    project_root: Path
    cpu_capacity: str | None = None


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.workers: dict[str, PodWorker] = {}
        self.worker_tasks: dict[str, asyncio.Task] = {}
        self.stopping = asyncio.Event()
        self.pool = PodAddressPool(settings.pod_network)
        self.context: AgentContext | None = None
        self.pod_reflector: Reflector | None = None
        self.network: ServiceNetwork | None = None
        self.kubelet_api: KubeletApi | None = None
        self.tasks: list[asyncio.Task] = []

    # --- pods ----------------------------------------------------------------------------------------

    def on_pod_event(self, kind: str, pod: dict) -> None:
        if self.network is not None:
            self.network.changed()
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker is not None:
                worker.gone()
            return
        if worker is not None:
            worker.update(pod)
            return
        self._start_worker(pod)

    def _start_worker(self, pod: dict) -> None:
        assert self.context is not None
        worker = PodWorker(self.context, pod)
        uid = worker.uid
        self.workers[uid] = worker
        task = asyncio.get_running_loop().create_task(self._supervise(worker),
                                                      name=f"pod {worker.namespace}/{worker.name}")
        self.worker_tasks[uid] = task

    async def _supervise(self, worker: PodWorker) -> None:
        """Run one pod's worker; a worker that fails is started afresh (it adopts its processes)."""
        try:
            await worker.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s/%s: worker failed; restarting it in %ss", worker.namespace, worker.name,
                          WORKER_RESTART_SECONDS)
            await asyncio.sleep(WORKER_RESTART_SECONDS)
            self.workers.pop(worker.uid, None)
            self.worker_tasks.pop(worker.uid, None)
            current = self.pod_reflector.store.get(worker.uid) if self.pod_reflector else None
            if current is not None and not self.stopping.is_set():
                self._start_worker(current)
            return
        self.workers.pop(worker.uid, None)
        self.worker_tasks.pop(worker.uid, None)

    def reap_orphans(self, known_uids: set[str]) -> None:
        """Processes an earlier run left for pods that no longer exist are killed."""
        pods_dir = self.settings.cluster_dir / "pods"
        if not pods_dir.is_dir():
            return
        for pod_dir in pods_dir.iterdir():
            try:
                marker = json.loads((pod_dir / "pod.json").read_text())
            except (OSError, ValueError):
                marker = {}
            if marker.get("uid") in known_uids:
                continue
            if marker.get("podIP"):
                addresses.remove_local_address(self.settings.cluster_dir, marker["podIP"], addresses.POD_ADDRESSES)
            for record in procs.read_records(pod_dir):
                killed = procs.kill_session(record.identity)
                if killed:
                    log.info("killed %d process(es) of container %s of vanished pod %s", killed,
                             record.container, pod_dir.name)
                procs.remove_record(pod_dir, record.container)
            (pod_dir / "pod.json").unlink(missing_ok=True)

    # --- the whole -----------------------------------------------------------------------------------

    async def _wait_for_api(self, client: KubeClient) -> dict:
        delay = 0.2
        while True:
            try:
                return await client.get("/version")
            except Exception as failure:
                log.info("waiting for the API server: %s", failure)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)

    async def _register(self, node: NodeRegistration) -> None:
        delay = 0.5
        while True:
            try:
                await node.register()
                return
            except Exception as failure:
                log.warning("node registration failed: %s; retrying", failure)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def run(self) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, self.stopping.set)
        agent_dir = settings.cluster_dir / "agent"
        agent_dir.mkdir(parents=True, exist_ok=True)
        kubeconfig = load_kubeconfig(settings.kubeconfig, scratch_dir=agent_dir)
        client = KubeClient(kubeconfig)
        server = urllib.parse.urlsplit(kubeconfig.server)
        self.network = ServiceNetwork(settings.cluster_dir, self.pool.host_ip,
                                      api_server=Endpoint(server.hostname or "127.0.0.1", server.port or 443))
        try:
            if await self._start(client, kubeconfig):
                await self.stopping.wait()
                log.info("stopping: pods keep running (an agent restart adopts them; `cleanup` kills them)")
        finally:
            await self._shutdown(client)

    async def _start(self, client: KubeClient, kubeconfig: KubeConfig) -> bool:
        """Register the node and start watching; False if a stop came first."""
        settings, loop = self.settings, asyncio.get_running_loop()
        answered = await self._unless_stopped(self._wait_for_api(client))
        if answered is None:
            return False
        version = answered.result()
        node = NodeRegistration(client, settings.node_name, self.pool.host_ip,
                                machine_capacity(settings.cluster_dir, settings.cpu_capacity),
                                version.get("gitVersion", "v0.0.0"))
        procs.uts_namespaces_usable()
        addresses.ensure_local_address(settings.cluster_dir, self.pool.host_ip, addresses.POD_ADDRESSES)
        self.context = AgentContext(
            client=client, kubeconfig=kubeconfig, node_name=settings.node_name, cluster_dir=settings.cluster_dir,
            project_root=settings.project_root, pool=self.pool, events=EventRecorder(client, settings.node_name),
            allocatable=node.allocatable, services_in=self.network.services_in)
        service_reflector = Reflector(client, "/api/v1/services", self.network.changed, name="services")
        self.pod_reflector = Reflector(client, "/api/v1/pods", self.on_pod_event, name="pods",
                                       params={"fieldSelector": f"spec.nodeName={settings.node_name}"})
        self.network.bind_stores(service_reflector.store, self.pod_reflector.store)
        self.tasks.append(loop.create_task(service_reflector.run(), name="services watch"))
        # Service link variables need every Service known before the first container starts
        if await self._unless_stopped(service_reflector.synced.wait()) is None:
            return False
        if await self._unless_stopped(self._register(node)) is None:
            return False
        self.tasks.append(loop.create_task(node.keep_alive(), name="node heartbeat"))
        self.tasks.append(loop.create_task(self.network.run(), name="service network"))
        self.tasks.append(loop.create_task(self.pod_reflector.run(), name="pods watch"))
        self.kubelet_api = KubeletApi(self.context.pod_dir, self.pool.host_ip, KUBELET_PORT, settings.node_name,
                                      settings.cluster_dir / "agent", kubeconfig.ca_data)
        await self.kubelet_api.start()
        if await self._unless_stopped(self.pod_reflector.synced.wait()) is None:
            return False
        self.reap_orphans(set(self.pod_reflector.store))
        log.info("node %s is running %d pod(s)", settings.node_name, len(self.workers))
        return True

    async def _shutdown(self, client: KubeClient) -> None:
        """Stop watching and proxying, undo the host changes; the pods' processes stay."""
        for task in [*self.tasks, *self.worker_tasks.values()]:
            task.cancel()
        await asyncio.gather(*self.tasks, *self.worker_tasks.values(), return_exceptions=True)
        if self.kubelet_api is not None:
            await self.kubelet_api.stop()
        try:
            await self.network.shutdown()
        except Exception:
            log.exception("could not undo the service network")
        await client.close()

    async def _unless_stopped(self, awaitable: Awaitable[T]) -> asyncio.Future[T] | None:
        """`awaitable` run to its end (as a done future), or None if a stop is requested first."""
        work = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait([work, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not work.done():
            work.cancel()
            return None
        return work


def run_agent(settings: AgentSettings) -> None:
    started = time.monotonic()
    log.info("node agent %s starting (cluster dir %s, pod network %s)", settings.node_name, settings.cluster_dir,
             settings.pod_network)
    asyncio.run(Agent(settings).run())
    log.info("node agent stopped after %.0fs", time.monotonic() - started)
