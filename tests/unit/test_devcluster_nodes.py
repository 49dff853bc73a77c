"""The pure parts of the real nodes: names and subnets per cluster, node configuration, add-ons."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from devcluster import addons, build, kuberouter, network, nodes

pytestmark = pytest.mark.unit

NET = network.ClusterNetwork(id="abc123", node_cidr="10.160.0.0/24", pod_cidr="10.210.0.0/16",
                             service_cidr="10.110.0.0/16")


def test_names_fit_the_kernels_interface_name_limit() -> None:
    for name in (NET.bridge, NET.host_veth(9), NET.netns(9)):
        assert len(name) <= 15


def test_two_cluster_directories_get_different_ids(tmp_path: Path) -> None:
    assert network.cluster_id(tmp_path / "a") != network.cluster_id(tmp_path / "b")
    assert network.cluster_id(tmp_path / "a") == network.cluster_id(tmp_path / "a")


def test_nodes_pods_and_services_get_disjoint_addresses() -> None:
    node_ips = {NET.node_ip(index) for index in (1, 2, 3)}
    assert len(node_ips) == 3 and NET.gateway_ip not in node_ips
    subnets = [ipaddress.ip_network(NET.node_pod_cidr(index)) for index in (1, 2, 3)]
    assert all(a.prefixlen == 24 and not a.overlaps(b) for a in subnets for b in subnets if a is not b)
    assert all(s.subnet_of(ipaddress.ip_network(NET.pod_cidr)) for s in subnets)
    assert ipaddress.ip_address(NET.dns_ip) in ipaddress.ip_network(NET.service_cidr)


def test_forward_rules_accept_the_cluster_and_drop_the_rest_last() -> None:
    rules = network._forward_rules(NET)
    assert rules[-1][-2:] == ["-j", "DROP"]
    assert all(NET.rule_comment in rule for rule in rules)
    to_services = [rule for rule in rules if NET.service_cidr in rule]
    assert to_services and all("REJECT" in rule for rule in to_services), "refused, never looped or dropped"


def _node(tmp_path: Path, index: int = 1) -> nodes.Node:
    return nodes.Node(cluster_dir=tmp_path, network=NET, index=index)


def test_containerd_config_works_in_this_sandbox(tmp_path: Path) -> None:
    config = nodes.containerd_config(_node(tmp_path), "registry.k8s.io/pause:3.10")
    assert "restrict_oom_score_adj = true" in config
    assert 'sandbox_image = "registry.k8s.io/pause:3.10"' in config
    assert str(_node(tmp_path).containerd_socket) in config
    assert len(str(_node(tmp_path).containerd_socket)) < 100


def test_kubelet_config_fits_a_cgroup_v1_host_and_the_cluster_dns(tmp_path: Path) -> None:
    config = nodes.kubelet_config(_node(tmp_path), tmp_path / "ca.crt")
    assert config["failCgroupV1"] is False and config["cgroupsPerQOS"] is False
    assert config["clusterDNS"] == [NET.dns_ip]
    assert config["podLogsDir"].startswith(str(tmp_path))
    assert config["address"] == NET.node_ip(1)


def test_each_node_allocates_pod_addresses_from_its_own_subnet(tmp_path: Path) -> None:
    one, two = (nodes.cni_config(_node(tmp_path, index)) for index in (1, 2))
    ranges = [c["plugins"][0]["ipam"]["ranges"][0][0]["subnet"] for c in (one, two)]
    assert ranges == [NET.node_pod_cidr(1), NET.node_pod_cidr(2)]
    assert one["plugins"][0]["ipMasq"] is False
    assert one["plugins"][0]["ipam"]["dataDir"] != two["plugins"][0]["ipam"]["dataDir"]


def test_kube_proxy_masquerades_what_comes_from_outside_the_pods(tmp_path: Path) -> None:
    config = nodes.kube_proxy_config(_node(tmp_path), tmp_path / "kubeconfig")
    assert config["clusterCIDR"] == NET.pod_cidr and config["mode"] == "iptables"


def test_coredns_serves_on_the_address_the_kubelets_are_told() -> None:
    manifests = addons.coredns_manifests("devcluster.local/coredns:1", NET.dns_ip)
    service = next(m for m in manifests if m["kind"] == "Service")
    assert service["spec"]["clusterIP"] == NET.dns_ip
    assert {p["port"] for p in service["spec"]["ports"]} == {53}


def test_every_node_keeps_its_volumes_in_its_own_directory(tmp_path: Path) -> None:
    paths = {"n1": tmp_path / "1", "n2": tmp_path / "2"}
    manifests = addons.local_path_manifests("lpp:1", "base:1", paths)
    config_map = next(m for m in manifests if m["kind"] == "ConfigMap")
    config = json.loads(config_map["data"]["config.json"])
    assert {entry["node"]: entry["paths"] for entry in config["nodePathMap"]} == {
        "n1": [str(tmp_path / "1")], "n2": [str(tmp_path / "2")]}
    storage_class = next(m for m in manifests if m["kind"] == "StorageClass")
    assert storage_class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"


def test_helm_assumes_the_pinned_kubernetes_without_a_cluster() -> None:
    flags = build._helm_ldflags()
    assert "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=35" in flags
    assert "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1" in flags


def test_kube_router_runs_the_firewall_alone_in_the_node_namespace(tmp_path: Path) -> None:
    node = _node(tmp_path, 2)
    line = nodes.command_lines(node, tmp_path / "bin")["kube-router"]
    assert line[:2] == ["nsenter", f"--net={node.netns_path}"]
    assert {"--run-firewall=true", "--run-router=false", "--run-service-proxy=false"} <= set(line)
    assert f"--hostname-override={node.name}" in line
    assert f"--service-cluster-ip-range={NET.service_cidr}" in line
    assert f"--kubeconfig={node.router_kubeconfig}" in line


def test_kube_router_may_read_what_its_policy_controller_watches() -> None:
    role, binding = kuberouter.rbac_manifests()
    granted = {(group, resource) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] if set(rule["verbs"]) == {"get", "list", "watch"}}
    assert {("", "pods"), ("", "namespaces"), ("", "nodes"), ("networking.k8s.io", "networkpolicies")} <= granted
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": kuberouter.USER}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_kube_router_is_cached_beside_the_control_plane_per_version(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("DEVCLUSTER_CACHE", str(tmp_path))
    assert kuberouter.binary() == tmp_path / f"kube-router-{kuberouter.VERSION}" / "bin" / "kube-router"
