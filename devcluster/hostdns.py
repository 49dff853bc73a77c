"""Cluster DNS for processes of this machine (an operator or a Celery worker a test runs on the
host), without touching anything machine-wide: the process runs in a mount namespace of its own
where the cluster's resolv.conf (its CoreDNS Service, the cluster.local search list) stands in for
/etc/resolv.conf. It resolves `<svc>.<ns>.svc` like a pod does; every other process of the
machine, and every other cluster, is unaffected.

The host reaches the addresses themselves through the routes `devcluster up` adds (pod subnets
via their nodes, the Service range via the first node's kube-proxy).
"""

from __future__ import annotations

from pathlib import Path


def resolv_conf_text(dns_ip: str) -> str:
    return (f"nameserver {dns_ip}\nsearch svc.cluster.local cluster.local\n"
            "options ndots:5 timeout:1 attempts:3\n")


def write_resolv_conf(cluster_dir: Path, dns_ip: str) -> Path:
    conf = cluster_dir / "host-resolv.conf"
    conf.write_text(resolv_conf_text(dns_ip))
    return conf


def command_with_cluster_dns(conf: Path, argv: list[str]) -> list[str]:
    """`argv`, run in a mount namespace of its own that sees `conf` as /etc/resolv.conf."""
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(conf), *argv]
