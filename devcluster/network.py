"""A cluster's own networks on this machine: one bridge in the host's namespace (the cluster's
"node network", like the Docker network of a kind cluster), one network namespace per node joined
to it by a veth pair, static routes for every node's pod subnet, and a few iptables rules.

Everything is named after the cluster's id (a hash of its directory), so `teardown` finds and
removes what `setup` made, also after a crash, and two clusters never share a name or a subnet.
Nodes reach each other and the host over the bridge; their pods are routed (no NAT); traffic from
the bridge to anywhere but this cluster is dropped, so a pod can reach its own cluster and the
host's addresses on the bridge, and nothing else.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

NETNS_DIR = Path("/run/netns")
RULE_COMMENT_PREFIX = "devcluster:"


class NetworkError(RuntimeError):
    pass


def cluster_id(directory: Path) -> str:
    return hashlib.sha256(str(directory.resolve()).encode()).hexdigest()[:6]


@dataclass(frozen=True)
class ClusterNetwork:
    """The names and subnets of one cluster; pure, computed from the id and the chosen networks."""

    id: str
    node_cidr: str      # the bridge's /24: host gateway .1, node i at .(10 + i)
    pod_cidr: str       # a /16: node i gets the /24 number i
    service_cidr: str

    @property
    def bridge(self) -> str:
        return f"dc{self.id}"

    @property
    def gateway_ip(self) -> str:
        return str(ipaddress.ip_network(self.node_cidr)[1])

    @property
    def prefix_length(self) -> int:
        return ipaddress.ip_network(self.node_cidr).prefixlen

    def netns(self, index: int) -> str:
        return f"dc{self.id}n{index}"

    def netns_path(self, index: int) -> Path:
        return NETNS_DIR / self.netns(index)

    def host_veth(self, index: int) -> str:
        return f"dc{self.id}v{index}"

    def node_ip(self, index: int) -> str:
        return str(ipaddress.ip_network(self.node_cidr)[10 + index])

    def node_pod_cidr(self, index: int) -> str:
        network = ipaddress.ip_network(self.pod_cidr)
        return str(list(network.subnets(new_prefix=24))[index])

    @property
    def dns_ip(self) -> str:
        return str(ipaddress.ip_network(self.service_cidr)[10])

    @property
    def rule_comment(self) -> str:
        return f"{RULE_COMMENT_PREFIX}{self.id}"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _in_netns(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    # nsenter, not `ip netns exec`: the latter remounts /sys, which hides the cgroup mounts
    result = subprocess.run(["nsenter", f"--net={NETNS_DIR / netns}", *argv], capture_output=True, text=True,
                            timeout=30)
    if check and result.returncode != 0:
        raise NetworkError(f"in {netns}: {' '.join(argv)}: {result.stderr.strip()}")
    return result


def _sysctl(netns: str | None, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    if netns is None:
        Path(path).write_text(value)
    else:
        _in_netns(netns, "sh", "-c", f"echo {value} > {path}")


def _iptables(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["iptables", "-w", "5", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NetworkError(f"iptables {' '.join(args)}: {result.stderr.strip()}")
    return result


def _forward_rules(network: ClusterNetwork) -> list[list[str]]:
    """FORWARD rules, first to last: within the bridge and to this cluster's pods pass; a Service
    address reaching the host from a node is one its kube-proxy has not programmed yet, refused
    at once (else the route back to the first node loops the SYN, and its conntrack entry keeps
    every retransmission from ever being translated); anything else from the bridge is dropped."""
    comment = ["-m", "comment", "--comment", network.rule_comment]
    return [
        ["-i", network.bridge, "-o", network.bridge, *comment, "-j", "ACCEPT"],
        ["-i", network.bridge, "-d", network.pod_cidr, *comment, "-j", "ACCEPT"],
        ["-i", network.bridge, "-d", network.service_cidr, "-p", "tcp", *comment,
         "-j", "REJECT", "--reject-with", "tcp-reset"],
        ["-i", network.bridge, "-d", network.service_cidr, *comment,
         "-j", "REJECT", "--reject-with", "icmp-port-unreachable"],
        ["-i", network.bridge, *comment, "-j", "DROP"],
    ]


def setup_bridge(network: ClusterNetwork) -> None:
    if _ip("link", "show", network.bridge, check=False).returncode != 0:
        _ip("link", "add", network.bridge, "type", "bridge")
    _ip("addr", "replace", f"{network.gateway_ip}/{network.prefix_length}", "dev", network.bridge)
    _ip("link", "set", network.bridge, "up")
    _sysctl(None, "net.ipv4.ip_forward", "1")
    _remove_forward_rules(network.id)
    for position, rule in enumerate(_forward_rules(network), start=1):
        _iptables("-I", "FORWARD", str(position), *rule)


def setup_node(network: ClusterNetwork, index: int, node_count: int) -> None:
    """The node's namespace, its veth on the bridge, its address and routes (idempotent)."""
    netns = network.netns(index)
    if not network.netns_path(index).exists():
        _ip("netns", "add", netns)
    veth = network.host_veth(index)
    if _ip("link", "show", veth, check=False).returncode != 0:
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    _ip("link", "set", veth, "master", network.bridge, "up")
    _in_netns(netns, "ip", "addr", "replace", f"{network.node_ip(index)}/{network.prefix_length}", "dev", "eth0")
    _in_netns(netns, "ip", "link", "set", "lo", "up")
    _in_netns(netns, "ip", "link", "set", "eth0", "up")
    _in_netns(netns, "ip", "route", "replace", "default", "via", network.gateway_ip)
    for key in ("net.ipv4.ip_forward", "net.ipv4.conf.all.route_localnet"):
        _sysctl(netns, key, "1")
    _in_netns(netns, "modprobe", "br_netfilter", check=False)
    _sysctl_if_present(netns, "net.bridge.bridge-nf-call-iptables", "1")
    for other in range(1, node_count + 1):
        if other != index:
            _in_netns(netns, "ip", "route", "replace", network.node_pod_cidr(other), "via", network.node_ip(other))
    _ip("route", "replace", network.node_pod_cidr(index), "via", network.node_ip(index), "dev", network.bridge)


def _sysctl_if_present(netns: str, key: str, value: str) -> None:
    _in_netns(netns, "sh", "-c", f"test ! -e /proc/sys/{key.replace('.', '/')} || echo {value} > "
                                  f"/proc/sys/{key.replace('.', '/')}")


def route_services(network: ClusterNetwork, via_index: int = 1) -> None:
    """Host -> ClusterIP through one node, whose kube-proxy translates (and masquerades) it."""
    _ip("route", "replace", network.service_cidr, "via", network.node_ip(via_index), "dev", network.bridge)


def netns_pids(netns_file: Path) -> list[int]:
    """Processes of this machine whose network namespace is the one bound at `netns_file`."""
    try:
        wanted = netns_file.stat().st_ino
    except OSError:
        return []
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "ns" / "net").stat().st_ino == wanted:
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _remove_forward_rules(identifier: str) -> None:
    for line in _iptables("-S", "FORWARD", check=False).stdout.splitlines():
        if f"{RULE_COMMENT_PREFIX}{identifier}" in line:
            _iptables(*shlex.split(line.replace("-A FORWARD", "-D FORWARD", 1)), check=False)


def teardown(identifier: str) -> None:
    """Remove the bridge, every node namespace and rule of cluster `identifier`. Never raises for
    what is already gone; processes inside the namespaces must have been stopped first."""
    _remove_forward_rules(identifier)
    prefix = f"dc{identifier}n"
    if NETNS_DIR.is_dir():
        for path in NETNS_DIR.iterdir():
            if path.name.startswith(prefix) and path.name[len(prefix):].isdigit():
                _ip("netns", "delete", path.name, check=False)
    _ip("link", "delete", f"dc{identifier}", check=False)


def addresses_in_use() -> set[ipaddress.IPv4Network]:
    """Every IPv4 network of this machine's addresses and routes, to pick subnets no one uses."""
    found: set[ipaddress.IPv4Network] = set()
    for line in _ip("-o", "-4", "addr", "show", check=False).stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            found.add(ipaddress.ip_network(parts[parts.index("inet") + 1], strict=False))
    for line in _ip("-4", "route", "show", check=False).stdout.splitlines():
        destination = line.split()[0] if line else ""
        if destination and destination != "default":
            try:
                found.add(ipaddress.ip_network(destination, strict=False))
            except ValueError:
                continue
    return found
