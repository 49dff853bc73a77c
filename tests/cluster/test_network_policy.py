"""The devcluster enforces NetworkPolicies (kube-router's firewall on every node,
devcluster/kuberouter.py): a deny-all ingress policy blocks pod-to-pod connections and the host's,
a policy that allows a peer lets exactly that peer through, and the kubelet's probes pass either way."""

from __future__ import annotations

import json
import socket

import pytest

from tests.cluster.test_nodes import pod, run_pod, wait_running
from tests.helpers.devcluster import DevCluster
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.cluster

PORT = 8080
# long enough for a SYN that is answered, short enough that a dropped one fails fast
CONNECT_TIMEOUT = 2


def _policy(name: str, ingress: list[dict]) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"], "ingress": ingress}}


def _apply(devcluster: DevCluster, namespace: str, manifest: dict) -> None:
    devcluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def _pod_connects(devcluster: DevCluster, namespace: str, client: str, address: str) -> bool:
    probe = f"import socket;socket.create_connection(('{address}', {PORT}), timeout={CONNECT_TIMEOUT}).close()"
    result = devcluster.kubectl("exec", "-n", namespace, client, "--", "python3", "-c", probe, check=False, timeout=30)
    return result.returncode == 0


def _host_connects(address: str) -> bool:
    try:
        socket.create_connection((address, PORT), timeout=CONNECT_TIMEOUT).close()
        return True
    except OSError:
        return False


def _ready(devcluster: DevCluster, namespace: str, name: str) -> bool:
    conditions = pod(devcluster, namespace, name)["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_policies_deny_and_allow_ingress_and_probes_still_pass(devcluster: DevCluster, namespace: str) -> None:
    probe = {"readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 1, "failureThreshold": 2}}
    run_pod(devcluster, namespace, "web", ["python3", "-m", "http.server", str(PORT), "--directory", "/etc"],
            container=probe)
    for name in ("client", "stranger"):
        run_pod(devcluster, namespace, name, ["sh", "-c", "exec sleep 3600"])
    web = wait_running(devcluster, namespace, "web")["status"]["podIP"]
    for name in ("client", "stranger"):
        wait_running(devcluster, namespace, name)
    wait_for(lambda: _pod_connects(devcluster, namespace, "client", web), 60, "client -> web without a policy")
    assert _host_connects(web), "without a policy the host reaches the pod"

    _apply(devcluster, namespace, _policy("deny-all", []))
    wait_for(lambda: not _pod_connects(devcluster, namespace, "client", web), 60, "the deny-all policy to block")
    assert not _pod_connects(devcluster, namespace, "stranger", web)
    assert not _host_connects(web), "the host's address is no pod of the node: the policy applies to it"
    # the kubelet probes from the pod's own node, which the engine always lets through
    wait_for(lambda: _ready(devcluster, namespace, "web"), 30, "web to be Ready")
    assert all(_ready(devcluster, namespace, "web") for _ in range(5))

    _apply(devcluster, namespace, _policy("from-client", [
        {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": PORT, "protocol": "TCP"}]},
    ]))
    wait_for(lambda: _pod_connects(devcluster, namespace, "client", web), 60, "the allowing policy to let client in")
    assert not _pod_connects(devcluster, namespace, "stranger", web), "a pod the policy does not name stays out"
    assert not _host_connects(web)

    _apply(devcluster, namespace, _policy("from-node-network", [
        {"from": [{"ipBlock": {"cidr": devcluster.node_network}}]},
    ]))
    wait_for(lambda: _host_connects(web), 60, "an ipBlock of the node network to let the host in")
    assert not _pod_connects(devcluster, namespace, "stranger", web)
