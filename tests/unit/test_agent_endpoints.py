"""Endpoints and names of Services, computed from pods."""

from __future__ import annotations

import pytest

from devcluster.agent.endpoints import (
    Endpoint,
    ServicePortKey,
    hosts_entries,
    proxied_ports,
    selector_matches,
    service_endpoints,
    target_port,
)

pytestmark = pytest.mark.unit


def pod(name: str, ip: str | None, labels: dict, ready: bool = True, namespace: str = "shop",
        deleting: bool = False, phase: str = "Running", ports: list | None = None, **spec) -> dict:
    metadata = {"name": name, "namespace": namespace, "labels": labels}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    status = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    return {"metadata": metadata, "status": status,
            "spec": {"containers": [{"name": "c", "ports": ports or [{"name": "http", "containerPort": 8080}]}],
                     **spec}}


def service(name: str = "web", selector: dict | None = None, cluster_ip: str = "10.150.0.5",
            ports: list | None = None, **spec) -> dict:
    return {"metadata": {"name": name, "namespace": "shop"},
            "spec": {"clusterIP": cluster_ip, "selector": selector if selector is not None else {"app": "web"},
                     "ports": ports or [{"port": 80, "targetPort": "http", "protocol": "TCP"}], **spec}}


def test_selector_is_an_equality_map_and_empty_selects_nothing() -> None:
    assert selector_matches({"app": "web"}, {"app": "web", "x": "y"})
    assert not selector_matches({"app": "web", "tier": "a"}, {"app": "web"})
    assert not selector_matches({}, {"app": "web"})
    assert not selector_matches(None, {"app": "web"})


def test_only_ready_live_matching_pods_of_the_namespace_are_endpoints() -> None:
    pods = [
        pod("a", "127.1.0.2", {"app": "web"}),
        pod("b", "127.1.0.3", {"app": "web"}, ready=False),
        pod("c", "127.1.0.4", {"app": "web"}, deleting=True),
        pod("d", "127.1.0.5", {"app": "web"}, namespace="other"),
        pod("e", "127.1.0.6", {"app": "db"}),
        pod("f", None, {"app": "web"}),
        pod("g", "127.1.0.7", {"app": "web"}, phase="Succeeded"),
        pod("h", "127.1.0.8", {"app": "web"}),
    ]
    svc = service()
    assert service_endpoints(svc, svc["spec"]["ports"][0], pods) == [Endpoint("127.1.0.2", 8080),
                                                                     Endpoint("127.1.0.8", 8080)]
    svc["spec"]["publishNotReadyAddresses"] = True
    assert Endpoint("127.1.0.3", 8080) in service_endpoints(svc, svc["spec"]["ports"][0], pods)


def test_target_port_number_name_and_default() -> None:
    backend = pod("a", "127.1.0.2", {}, ports=[{"name": "http", "containerPort": 8080},
                                               {"name": "dns", "containerPort": 53, "protocol": "UDP"}])
    assert target_port({"port": 80, "targetPort": 9000}, backend) == 9000
    assert target_port({"port": 80, "targetPort": "http"}, backend) == 8080
    assert target_port({"port": 80}, backend) == 80
    assert target_port({"port": 53, "targetPort": "dns"}, backend) is None  # UDP port, TCP service port
    assert target_port({"port": 80, "targetPort": "nope"}, backend) is None


def test_proxied_ports_skip_headless_and_udp() -> None:
    wanted = proxied_ports([
        service("web", ports=[{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]),
        service("headless", cluster_ip="None"),
    ])
    assert list(wanted) == [ServicePortKey("10.150.0.5", 80)]


def test_hosts_entries_name_services_and_headless_pods() -> None:
    pods = [pod("db-0", "127.1.0.9", {"app": "db"}, hostname="db-0", subdomain="db")]
    entries = hosts_entries([service("web"), service("db", {"app": "db"}, cluster_ip="None")], pods)
    assert entries == [
        ("127.1.0.9", ["db.shop", "db.shop.svc", "db.shop.svc.cluster.local"]),
        ("127.1.0.9", ["db-0.db.shop.svc", "db-0.db.shop.svc.cluster.local"]),
        ("10.150.0.5", ["web.shop", "web.shop.svc", "web.shop.svc.cluster.local"]),
    ]
