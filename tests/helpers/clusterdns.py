"""The test session resolves the session cluster's Service names (`<svc>.<ns>.svc`) through the
cluster's own CoreDNS, as a pod would: in this process by a resolver in front of
socket.getaddrinfo for cluster names only, in the processes it starts (an operator, Celery
workers and producers on the host) by running them with the cluster's resolv.conf
(devcluster.hostdns). Nothing machine-wide changes, so clusters side by side never mix names."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import dns.resolver

from devcluster import hostdns

if TYPE_CHECKING:
    from tests.helpers.devcluster import DevCluster

CLUSTER_SUFFIXES = (".svc", ".svc.cluster.local", ".cluster.local")

_resolver: dns.resolver.Resolver | None = None
_resolv_conf: Path | None = None
_system_getaddrinfo = socket.getaddrinfo


def use(cluster: DevCluster) -> None:
    """From now on, resolve `cluster`'s names in this process and in the commands of wrap()."""
    global _resolver, _resolv_conf
    state = cluster.handle.state()
    if not state.nodes:
        _resolver = _resolv_conf = None
        return
    dns_ip = state.network.dns_ip
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns_ip]
    resolver.timeout, resolver.lifetime = 1, 5
    _resolver = resolver
    _resolv_conf = hostdns.write_resolv_conf(cluster.dir, dns_ip)
    socket.getaddrinfo = _getaddrinfo


@contextlib.contextmanager
def using(cluster: DevCluster) -> Iterator[None]:
    """Resolve `cluster`'s names for a while (a test's own cluster), then the previous one's again."""
    previous = (_resolver, _resolv_conf)
    use(cluster)
    try:
        yield
    finally:
        _restore(*previous)


def _restore(resolver: dns.resolver.Resolver | None, conf: Path | None) -> None:
    global _resolver, _resolv_conf
    _resolver, _resolv_conf = resolver, conf


def wrap(argv: list[str]) -> list[str]:
    """`argv` as a process that resolves the session cluster's names."""
    return hostdns.command_with_cluster_dns(_resolv_conf, argv) if _resolv_conf else argv


def wrap_for(cluster: DevCluster, argv: list[str]) -> list[str]:
    """`argv` as a process that resolves the names of `cluster` (any cluster, not only the session's)."""
    state = cluster.handle.state()
    if not state.nodes:
        return argv
    return hostdns.command_with_cluster_dns(hostdns.write_resolv_conf(cluster.dir, state.network.dns_ip), argv)


def _fully_qualified(host: str) -> str | None:
    name = host.rstrip(".")
    if name.endswith(".cluster.local"):
        return name + "."
    if name.endswith(".svc"):
        return name + ".cluster.local."
    return None


def _getaddrinfo(host, *args, **kwargs):
    qualified = _fully_qualified(host) if isinstance(host, str) and _resolver is not None else None
    if qualified is not None:
        try:
            host = _resolver.resolve(qualified, "A")[0].address
        except dns.exception.DNSException as failure:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: {failure}") from failure
    return _system_getaddrinfo(host, *args, **kwargs)
