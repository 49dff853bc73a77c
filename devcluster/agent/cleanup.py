"""`cleanup(cluster_dir)`: the backstop `devcluster down` calls after stopping the agent.

It kills every pod process recorded under `<cluster_dir>/pods/*/run/*.json` (each record holds
the pid, its start time and the boot ID: a pid is only killed while it is still that process;
the container's whole session goes), and undoes what the agent changed on the host: its block
in /etc/hosts and the cluster IPs it added to `lo`. Safe to call any number of times, with or
without an agent having run, and it never raises for what is already gone.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from devcluster.agent import addresses, hostsfile, procs

log = logging.getLogger(__name__)


def kill_pod_processes(cluster_dir: Path) -> int:
    """SIGKILL every recorded container (its whole session); the number of processes killed."""
    killed = 0
    pods_dir = cluster_dir / "pods"
    if not pods_dir.is_dir():
        return 0
    for pod_dir in sorted(pods_dir.iterdir()):
        if not pod_dir.is_dir():
            continue
        for record in procs.read_records(pod_dir):
            killed += procs.kill_session(record.identity)
        shutil.rmtree(procs.run_dir(pod_dir), ignore_errors=True)
    return killed


def cleanup(cluster_dir: Path) -> None:
    cluster_dir = Path(cluster_dir).resolve()
    try:
        killed = kill_pod_processes(cluster_dir)
        if killed:
            log.info("cleanup: killed %d pod process(es) of %s", killed, cluster_dir)
    except Exception:
        log.exception("cleanup: killing pod processes of %s failed", cluster_dir)
    try:
        hostsfile.set_block(cluster_dir, None)
    except Exception:
        log.exception("cleanup: could not remove the /etc/hosts block of %s", cluster_dir)
    try:
        addresses.remove_all_local_addresses(cluster_dir)
    except Exception:
        log.exception("cleanup: could not remove the loopback addresses of %s", cluster_dir)
