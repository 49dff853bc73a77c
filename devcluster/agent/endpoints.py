"""Service endpoints and Service names, computed from pods. Pure.

kube-proxy and CoreDNS read EndpointSlices; here the agent computes the same answer from the
pods it runs (EndpointSlice validation rejects the loopback pod IPs this node hands out):
a pod backs a Service when it is in the Service's namespace, matches its selector, has an IP,
is not terminating and is Ready (or the Service publishes not-ready addresses).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

Object = Mapping[str, Any]

CLUSTER_DOMAIN = "cluster.local"


@dataclass(frozen=True, order=True)
class Endpoint:
    ip: str
    port: int


@dataclass(frozen=True, order=True)
class ServicePortKey:
    """One listening socket of the service proxy."""

    cluster_ip: str
    port: int


def has_cluster_ip(service: Object) -> bool:
    ip = (service.get("spec") or {}).get("clusterIP")
    return bool(ip) and ip != "None"


def selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str] | None) -> bool:
    """A Service selector (an equality map) matches; an empty selector selects no pods."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(key) == value for key, value in selector.items())


def pod_is_ready(pod: Object) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def pod_serves(pod: Object, include_unready: bool) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
        return False
    return include_unready or pod_is_ready(pod)


def target_port(service_port: Mapping[str, Any], pod: Object) -> int | None:
    """The pod port a Service port forwards to: a number, or a named container port."""
    wanted = service_port.get("targetPort", service_port.get("port"))
    if isinstance(wanted, int):
        return wanted
    if isinstance(wanted, str) and wanted.isdigit():
        return int(wanted)
    protocol = service_port.get("protocol") or "TCP"
    for container in (pod.get("spec") or {}).get("containers") or ():
        for port in container.get("ports") or ():
            if port.get("name") == wanted and (port.get("protocol") or "TCP") == protocol:
                return int(port["containerPort"])
    return None


def backing_pods(service: Object, pods: Iterable[Object]) -> list[Object]:
    metadata = service.get("metadata") or {}
    spec = service.get("spec") or {}
    include_unready = bool(spec.get("publishNotReadyAddresses"))
    return [
        pod for pod in pods
        if (pod.get("metadata") or {}).get("namespace") == metadata.get("namespace")
        and selector_matches(spec.get("selector"), (pod.get("metadata") or {}).get("labels"))
        and pod_serves(pod, include_unready)
    ]


def service_endpoints(service: Object, service_port: Mapping[str, Any], pods: Iterable[Object]) -> list[Endpoint]:
    """Where connections to one port of the Service go, sorted for stable round-robin."""
    found = set()
    for pod in backing_pods(service, pods):
        port = target_port(service_port, pod)
        if port is not None:
            found.add(Endpoint(pod["status"]["podIP"], port))
    return sorted(found)


def proxied_ports(services: Iterable[Object]) -> dict[ServicePortKey, tuple[Object, Mapping[str, Any]]]:
    """Every TCP (clusterIP, port) the proxy should listen on, with its Service and port spec."""
    wanted: dict[ServicePortKey, tuple[Object, Mapping[str, Any]]] = {}
    for service in services:
        if not has_cluster_ip(service):
            continue
        spec = service["spec"]
        for port in spec.get("ports") or ():
            if (port.get("protocol") or "TCP") != "TCP":
                continue
            for ip in spec.get("clusterIPs") or [spec["clusterIP"]]:
                if ":" not in ip:  # IPv4 only
                    wanted[ServicePortKey(ip, int(port["port"]))] = (service, port)
    return wanted


def service_names(name: str, namespace: str) -> list[str]:
    """The names a Service answers to from anywhere: `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`."""
    return [f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.{CLUSTER_DOMAIN}"]


def hosts_entries(services: Iterable[Object], pods: Sequence[Object]) -> list[tuple[str, list[str]]]:
    """(address, names) lines: a Service with a cluster IP maps to it; a headless Service maps to
    its ready pods, and each of its pods with `hostname` + `subdomain` gets its own name."""
    entries: list[tuple[str, list[str]]] = []
    for service in sorted(services, key=lambda s: (s["metadata"].get("namespace", ""), s["metadata"]["name"])):
        metadata, spec = service["metadata"], service.get("spec") or {}
        name, namespace = metadata["name"], metadata.get("namespace", "default")
        if spec.get("type") == "ExternalName":
            continue
        if has_cluster_ip(service):
            entries.append((spec["clusterIP"], service_names(name, namespace)))
            continue
        for pod in sorted(backing_pods(service, pods), key=lambda p: p["status"]["podIP"]):
            entries.append((pod["status"]["podIP"], service_names(name, namespace)))
            pod_spec = pod.get("spec") or {}
            if pod_spec.get("hostname") and pod_spec.get("subdomain") == name:
                host = pod_spec["hostname"]
                entries.append((pod["status"]["podIP"],
                                [f"{host}.{name}.{namespace}.svc", f"{host}.{name}.{namespace}.svc.{CLUSTER_DOMAIN}"]))
    return entries
