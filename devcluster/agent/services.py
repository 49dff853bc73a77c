"""Services on this machine: a userspace TCP proxy per (cluster IP, port) and the names in
/etc/hosts. This is what kube-proxy and cluster DNS do on a real node.

Each Service port with a cluster IP gets an asyncio listener on clusterIP:port (the address is
added to `lo` when it is not local yet); each accepted connection goes to the next ready
endpoint (round robin; an endpoint that refuses is skipped), and is spliced both ways.
A Service without endpoints refuses by closing the connection at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from devcluster.agent import addresses, hostsfile
from devcluster.agent.endpoints import Endpoint, ServicePortKey, hosts_entries, proxied_ports, service_endpoints
from devcluster.agent.probes import local_address_for

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 5.0
CHUNK = 64 * 1024
RECONCILE_DEBOUNCE_SECONDS = 0.05
RETRY_SECONDS = 10.0


@dataclass
class Listener:
    key: ServicePortKey
    server: asyncio.AbstractServer | None = None
    endpoints: list[Endpoint] = field(default_factory=list)
    next_index: int = 0
    description: str = ""
    problem: str = ""  # the last reason it could not listen (logged once)

    def rotation(self) -> list[Endpoint]:
        """The endpoints in the order to try them for the next connection."""
        if not self.endpoints:
            return []
        start = self.next_index % len(self.endpoints)
        self.next_index = start + 1
        return self.endpoints[start:] + self.endpoints[:start]


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


def _is_master_service(service: Mapping[str, Any]) -> bool:
    metadata = service.get("metadata") or {}
    return metadata.get("namespace") == "default" and metadata.get("name") == "kubernetes" \
        and not (service.get("spec") or {}).get("selector")


class ServiceNetwork:
    def __init__(self, cluster_dir: Path, host_ip: str | None = None, api_server: Endpoint | None = None,
                 extra_hosts: list[tuple[str, list[str]]] | None = None,
                 hosts_path: Path = hostsfile.HOSTS_PATH) -> None:
        self.cluster_dir = cluster_dir
        self.host_ip = host_ip
        self.api_server = api_server
        self.extra_hosts = extra_hosts or []
        self.hosts_path = hosts_path
        self.services: Mapping[str, dict] = {}
        self.pods: Mapping[str, dict] = {}
        self.listeners: dict[ServicePortKey, Listener] = {}
        self._dirty = asyncio.Event()
        self._hosts_written: list[tuple[str, list[str]]] | None = None
        self.tasks: set[asyncio.Task] = set()

    def bind_stores(self, services: Mapping[str, dict], pods: Mapping[str, dict]) -> None:
        self.services = services
        self.pods = pods

    def changed(self, *_: Any) -> None:
        self._dirty.set()

    def services_in(self, namespace: str) -> list[dict]:
        return [service for service in self.services.values() if service["metadata"].get("namespace") == namespace]

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), RETRY_SECONDS)
            except asyncio.TimeoutError:
                pass
            await asyncio.sleep(RECONCILE_DEBOUNCE_SECONDS)
            self._dirty.clear()
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("service network reconcile failed; retrying")

    async def reconcile(self) -> None:
        services = list(self.services.values())
        pods = list(self.pods.values())
        wanted = proxied_ports(services)
        for key in [key for key in self.listeners if key not in wanted]:
            await self._close_listener(self.listeners.pop(key))
        still_used = {key.cluster_ip for key in wanted}
        for ip in addresses.recorded_addresses(self.cluster_dir):
            if ip not in still_used:
                await asyncio.to_thread(addresses.remove_local_address, self.cluster_dir, ip)
        for key, (service, port) in wanted.items():
            listener = self.listeners.get(key)
            if listener is None:
                listener = self.listeners[key] = Listener(key)
            listener.description = f"{service['metadata'].get('namespace')}/{service['metadata']['name']}:{key.port}"
            listener.endpoints = service_endpoints(service, port, pods)
            if not listener.endpoints and self.api_server and _is_master_service(service):
                # the API server's own Service leads to the API server, as on a real cluster
                listener.endpoints = [self.api_server]
            if listener.server is None:
                await self._open_listener(listener)
        entries = [*self.extra_hosts, *hosts_entries(services, pods)]
        if entries != self._hosts_written:
            await asyncio.to_thread(hostsfile.set_block, self.cluster_dir, entries, self.hosts_path)
            self._hosts_written = entries

    async def _open_listener(self, listener: Listener) -> None:
        key = listener.key
        bindable = await asyncio.to_thread(addresses.ensure_local_address, self.cluster_dir, key.cluster_ip)
        try:
            if not bindable:
                raise OSError(errno.EADDRNOTAVAIL, f"cannot make {key.cluster_ip} a local address")
            listener.server = await asyncio.start_server(
                lambda reader, writer: self._serve(listener, reader, writer), key.cluster_ip, key.port,
                reuse_address=True, backlog=1024)
        except OSError as failure:
            problem = str(failure)
            if problem != listener.problem:
                log.warning("service %s: cannot listen on %s:%d: %s (retrying)", listener.description,
                            key.cluster_ip, key.port, problem)
            listener.problem = problem
            return
        listener.problem = ""
        log.info("service %s: proxying %s:%d", listener.description, key.cluster_ip, key.port)

    async def _close_listener(self, listener: Listener) -> None:
        if listener.server is not None:
            listener.server.close()
            log.info("service %s: stopped proxying %s:%d", listener.description, listener.key.cluster_ip,
                     listener.key.port)
            listener.server = None

    async def _serve(self, listener: Listener, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        upstream = None
        for endpoint in listener.rotation():
            try:
                upstream = await asyncio.wait_for(
                    asyncio.open_connection(endpoint.ip, endpoint.port,
                                            local_addr=local_address_for(endpoint.ip, self.host_ip)),
                    CONNECT_TIMEOUT_SECONDS)
                break
            except (OSError, asyncio.TimeoutError) as failure:
                log.debug("service %s: endpoint %s:%d failed: %s", listener.description, endpoint.ip,
                          endpoint.port, failure)
        if upstream is None:
            await _close(client_writer)
            return
        upstream_reader, upstream_writer = upstream
        try:
            await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))
        finally:
            await _close(upstream_writer)
            await _close(client_writer)

    async def shutdown(self) -> None:
        """Stop proxying, take the names out of /etc/hosts and the addresses off `lo`."""
        for listener in self.listeners.values():
            await self._close_listener(listener)
        self.listeners.clear()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.to_thread(hostsfile.set_block, self.cluster_dir, None, self.hosts_path)
        await asyncio.to_thread(addresses.remove_all_local_addresses, self.cluster_dir,
                                [addresses.SERVICE_ADDRESSES])

