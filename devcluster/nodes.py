"""Real nodes: per node a containerd, a kubelet, a kube-proxy and kube-router's NetworkPolicy
firewall (devcluster/kuberouter.py), each started inside the node's
own network namespace (devcluster/network.py), with the node's files in `<cluster>/nodes/<i>/`
and its sockets and runtime state in `/run/dc/<cluster id>/n<i>/` (short paths: unix sockets
are limited to 108 bytes).

The configuration builders are pure; `prepare` writes them, `command_lines` says how to start
each process and `kill_everything` is the backstop that also works after a crash.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from devcluster import kuberouter
from devcluster.network import ClusterNetwork, netns_pids

RUN_ROOT = Path("/run/dc")
CNI_BIN_DIR = "/usr/lib/cni"
NODE_COMPONENTS = ("containerd", "kubelet", "kube-proxy", "kube-router")


def node_name(index: int) -> str:
    return f"devcluster-node-{index}"


@dataclass(frozen=True)
class Node:
    cluster_dir: Path
    network: ClusterNetwork
    index: int

    @property
    def name(self) -> str:
        return node_name(self.index)

    @property
    def dir(self) -> Path:
        return self.cluster_dir / "nodes" / str(self.index)

    @property
    def run_dir(self) -> Path:
        return RUN_ROOT / self.network.id / f"n{self.index}"

    @property
    def kubelet_root(self) -> Path:
        """Short, like every path the kubelet makes unix sockets under (pod-resources, plugins)."""
        return self.run_dir / "kubelet"

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def kubelet_kubeconfig(self) -> Path:
        return self.dir / "kubelet.kubeconfig"

    @property
    def proxy_kubeconfig(self) -> Path:
        return self.dir / "kube-proxy.kubeconfig"

    @property
    def router_kubeconfig(self) -> Path:
        return self.dir / "kube-router.kubeconfig"

    @property
    def ip(self) -> str:
        return self.network.node_ip(self.index)

    @property
    def pod_cidr(self) -> str:
        return self.network.node_pod_cidr(self.index)

    @property
    def netns_path(self) -> Path:
        return self.network.netns_path(self.index)

    def component(self, name: str) -> str:
        """The component's name in the cluster's pid and log files."""
        return f"node{self.index}-{name}"


# --- configuration (pure) ---------------------------------------------------------------------

def containerd_config(node: Node, pause_image: str) -> str:
    run = node.run_dir
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join([
        "version = 2",
        f'root = "{node.dir / "containerd"}"',
        f'state = "{run / "containerd"}"',
        # zfs, btrfs, devmapper and aufs are not on this machine; skip their start-up errors
        'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", '
        '"io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]',
        "[grpc]", f'  address = "{node.containerd_socket}"',
        "[ttrpc]", f'  address = "{run / "containerd.sock.ttrpc"}"',
        "[debug]", '  address = ""',
        "[metrics]", '  address = ""',
        '[plugins."io.containerd.internal.v1.opt"]', f'  path = "{node.dir / "opt"}"',
        f"[{cri}]",
        f'  sandbox_image = "{pause_image}"',
        # this sandbox refuses to lower oom_score_adj; without this every sandbox fails to start
        "  restrict_oom_score_adj = true",
        # pods' network namespaces under the node's state, where the backstop finds them
        "  netns_mounts_under_state_dir = true",
        '  stream_server_address = "127.0.0.1"',
        f"[{cri}.containerd]",
        '  snapshotter = "overlayfs"',
        '  default_runtime_name = "runc"',
        f"[{cri}.containerd.runtimes.runc]",
        '  runtime_type = "io.containerd.runc.v2"',
        f"[{cri}.containerd.runtimes.runc.options]",
        "  SystemdCgroup = false",
        f"[{cri}.cni]",
        f'  bin_dir = "{CNI_BIN_DIR}"',
        f'  conf_dir = "{node.dir / "cni"}"',
        "",
    ])


def cni_config(node: Node) -> dict:
    """A bridge in the node's namespace, routed (no masquerade: NetworkPolicies see pod sources)."""
    return {
        "cniVersion": "1.0.0",
        "name": "devcluster",
        "plugins": [
            {
                "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
                "ipam": {
                    "type": "host-local", "dataDir": str(node.dir / "ipam"),
                    "ranges": [[{"subnet": node.pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config(node: Node, ca_file: Path) -> dict:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # the host is cgroup v1, without systemd: cgroupfs, no QoS hierarchy, nothing to reserve
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "cgroupsPerQOS": False,
        "enforceNodeAllocatable": [],
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "address": node.ip,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "authentication": {"x509": {"clientCAFile": str(ca_file)}, "webhook": {"enabled": True},
                           "anonymous": {"enabled": False}},
        "authorization": {"mode": "Webhook"},
        "clusterDNS": [node.network.dns_ip],
        "clusterDomain": "cluster.local",
        # pods with dnsPolicy Default get no upstream: nothing outside the cluster is reachable
        "resolvConf": str(node.dir / "resolv.conf"),
        "podLogsDir": str(node.dir / "pod-logs"),
        "maxPods": 250,
        "serializeImagePulls": False,
        # images are loaded, never pulled: never collect them
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        # absolute, not a share of a large shared disk: under disk pressure the kubelet deletes unused
        # images, and containerd 1.6 does not pin the pause image, so no pod could start after
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "256Mi", "imagefs.available": "256Mi"},
        # a lost node is noticed within seconds (the controller manager's grace period is 16 s)
        "nodeLeaseDurationSeconds": 16,
        "nodeStatusUpdateFrequency": "4s",
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "20s",
        "shutdownGracePeriod": "0s",
        "oomScoreAdj": 0,
    }


def kube_proxy_config(node: Node, kubeconfig: Path) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": node.name,
        "mode": "iptables",
        # traffic from outside the pods (the host, another node) to a Service is masqueraded, so
        # its answer comes back through the node that translated it
        "clusterCIDR": node.network.pod_cidr,
        # the sandbox's conntrack table is not ours to size
        "conntrack": {"maxPerCore": 0, "min": 0},
        "metricsBindAddress": "127.0.0.1:10249",
        "healthzBindAddress": "127.0.0.1:10256",
        "iptables": {"syncPeriod": "10s", "minSyncPeriod": "0s"},
    }


# --- files and command lines ------------------------------------------------------------------

def prepare(node: Node, ca_file: Path, pause_image: str) -> None:
    for directory in (node.dir / "cni", node.kubelet_root, node.dir / "pod-logs", node.run_dir):
        directory.mkdir(parents=True, exist_ok=True)
    (node.dir / "containerd.toml").write_text(containerd_config(node, pause_image))
    (node.dir / "cni" / "10-devcluster.conflist").write_text(json.dumps(cni_config(node), indent=2))
    (node.dir / "resolv.conf").write_text("")
    (node.dir / "kubelet.yaml").write_text(yaml.safe_dump(kubelet_config(node, ca_file), sort_keys=False))
    (node.dir / "kube-proxy.yaml").write_text(
        yaml.safe_dump(kube_proxy_config(node, node.proxy_kubeconfig), sort_keys=False))


def _in_node(node: Node, argv: list[str]) -> list[str]:
    return ["nsenter", f"--net={node.netns_path}", *argv]


def command_lines(node: Node, bin_dir: Path) -> dict[str, list[str]]:
    """Each node component's command line, in start order."""
    return {
        "containerd": _in_node(node, ["containerd", "--config", str(node.dir / "containerd.toml")]),
        "kubelet": _in_node(node, [
            str(bin_dir / "kubelet"), f"--config={node.dir / 'kubelet.yaml'}",
            f"--kubeconfig={node.kubelet_kubeconfig}", f"--root-dir={node.kubelet_root}",
            f"--hostname-override={node.name}", f"--node-ip={node.ip}", "--v=1",
        ]),
        "kube-proxy": _in_node(node, [str(bin_dir / "kube-proxy"), f"--config={node.dir / 'kube-proxy.yaml'}",
                                      "--v=1"]),
        "kube-router": _in_node(node, [str(kuberouter.binary()), *kuberouter.arguments(
            kubeconfig=node.router_kubeconfig, node_name=node.name, service_cidr=node.network.service_cidr)]),
    }


def ctr(node: Node, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["ctr", "--address", str(node.containerd_socket), "--namespace", "k8s.io", *args],
                          capture_output=True, text=True, timeout=timeout)


def containerd_answers(node: Node) -> bool:
    return node.containerd_socket.exists() and ctr(node, "version", timeout=5).returncode == 0


class ImageLoadFailed(RuntimeError):
    pass


def load_images(node: Node, archives: list) -> None:
    """Import image archives (devcluster.images.Image) into the node's containerd, where the
    kubelet finds them: nothing is ever pulled."""
    for image in archives:
        result = ctr(node, "images", "import", str(image.archive))
        if result.returncode != 0:
            raise ImageLoadFailed(f"{node.name}: importing {image.reference}: {result.stderr.strip()}")


# --- the backstop -----------------------------------------------------------------------------

def _pod_netns_files(run_dir: Path) -> list[Path]:
    """Pods' network namespaces, which the CRI plugin mounts under its state directory."""
    return sorted((run_dir / "containerd").glob("*/netns/*"))


def kill_everything(cluster_id: str, cluster_dir: Path) -> int:
    """SIGKILL every process in this cluster's node and pod namespaces, then unmount what the
    nodes mounted (pod volumes, container root filesystems, namespace files). Returns the number
    of processes killed."""
    run_root = RUN_ROOT / cluster_id
    namespaces = sorted(Path("/run/netns").glob(f"dc{cluster_id}n*")) if Path("/run/netns").is_dir() else []
    for node_run in sorted(run_root.glob("n*")) if run_root.is_dir() else []:
        namespaces += _pod_netns_files(node_run)
    killed = _kill_in(namespaces)
    unmount_under((cluster_dir, run_root))
    return killed


def kill_node(node: Node) -> int:
    """Every process of one node (its components, shims and containers) SIGKILLed."""
    return _kill_in([node.netns_path, *_pod_netns_files(node.run_dir)])


def _kill_in(namespaces: list[Path]) -> int:
    killed = 0
    for _ in range(3):
        pids = {pid for path in namespaces for pid in netns_pids(path)} - {os.getpid()}
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(0.3)
    return killed


def unmount_under(roots: tuple[Path, ...]) -> None:
    prefixes = tuple(str(root.resolve()) + "/" for root in roots)
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for target in sorted((m for m in mounts if m.startswith(prefixes)), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, timeout=30)
