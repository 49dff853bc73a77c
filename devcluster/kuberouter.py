"""The devcluster's NetworkPolicy engine: kube-router's firewall (its network policy controller),
built from its Go module into the cache and run on every node as a host process in the node's
network namespace, beside kube-proxy. Only the firewall runs: routing stays the nodes' static
routes and Services stay kube-proxy's.

It turns NetworkPolicies into iptables rules and ipsets in the node's namespace (filter FORWARD
and OUTPUT; the node's bridge passes pod-to-pod traffic through iptables with
bridge-nf-call-iptables=1, devcluster/network.py). Facts read from its v2.1.0 source that the
cluster relies on:

- traffic whose source is an address of the pod's own node (`-m addrtype --src-type LOCAL`) is
  always accepted: the kubelet's probes pass every policy, as on other engines;
- everything else is judged by the policies, with the source seen as it arrives at the pod's
  node: the host's connections to a pod on the node its Service route goes through keep the
  host's bridge address, those to a pod on another node arrive masqueraded to that node's address
  (kube-proxy); so "the host" in an ipBlock is the node network, bridge and nodes alike.

Why kube-router and this version: sigs.k8s.io/kube-network-policies needs nftables `queue`
verdicts, which this machine's kernel lacks (CONFIG_NFT_QUEUE); kube-router uses iptables and
ipset, both there. v2.1.0 is the version the module proxy serves here; security flaws are
reported against it, which is acceptable for test infrastructure that never ships and is reached
only from this machine (its go.mod has no replace directives: a plain `go install` builds it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from devcluster import build

MODULE = "github.com/cloudnativelabs/kube-router/v2"
VERSION = "v2.1.0"
# the client identity of every node's kube-router (devcluster/pki.py) and its RBAC below
USER = "system:kube-router"
CLUSTER_ROLE = "devcluster:kube-router"
HEALTH_PORT = 20244


def version_dir() -> Path:
    return build.go_tool_dir("kube-router", VERSION)


def binary() -> Path:
    return version_dir() / "bin" / "kube-router"


def ensure() -> Path:
    """Return the kube-router binary, building it first when the cache lacks it."""
    return build.go_install("kube-router", f"{MODULE}/cmd/kube-router", VERSION,
                            f"-s -w -X {MODULE}/pkg/version.Version={VERSION}", nice=10)


def main() -> int:
    return build.run_and_report("kube-router", ensure)


# --- how it runs (pure) -------------------------------------------------------------------------

def arguments(*, kubeconfig: Path, node_name: str, service_cidr: str) -> list[str]:
    """kube-router's flags on one node: the firewall alone."""
    return [
        "--run-firewall=true", "--run-router=false", "--run-service-proxy=false",
        f"--kubeconfig={kubeconfig}", f"--hostname-override={node_name}",
        # required by the controller, which names the range in rules of its own; without the flag
        # it assumes 10.96.0.0/12, not this cluster's
        f"--service-cluster-ip-range={service_cidr}",
        # the CNI config is the bridge plugin's, not kube-router's to rewrite
        "--enable-cni=false",
        f"--health-port={HEALTH_PORT}", "--metrics-port=0",
        "--v=1",
    ]


def rbac_manifests() -> list[dict[str, Any]]:
    """What the network policy controller reads: pods, namespaces and policies to build its
    rules, its node for its address, Services and endpoints for its informers."""
    read = ["get", "list", "watch"]
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": CLUSTER_ROLE},
         "rules": [
             {"apiGroups": [""], "resources": ["pods", "namespaces", "nodes", "services", "endpoints"], "verbs": read},
             {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": read},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": read},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": CLUSTER_ROLE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CLUSTER_ROLE},
         "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": USER}]},
    ]
