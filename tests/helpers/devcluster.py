"""A handle on a running devcluster for tests: kubeconfig, kubectl, helm and API clients."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import contextlib
from collections.abc import Iterator

import kubernetes

from devcluster import build, cluster
from devcluster.cluster import Cluster
from tests.helpers import clusterdns


@dataclass(frozen=True)
class DevCluster:
    dir: Path
    bin_dir: Path

    @property
    def handle(self) -> Cluster:
        return Cluster(self.dir)

    @property
    def kubeconfig(self) -> Path:
        return self.handle.kubeconfig

    @property
    def node_names(self) -> list[str]:
        return self.handle.state().node_names

    @property
    def host_ip(self) -> str:
        """This machine's address on the cluster's bridge: servers the tests start on the host
        listen here, so that pods reach them (the host reaches it too)."""
        return self.handle.state().apiserver_ip

    @property
    def node_network(self) -> str:
        """The bridge's subnet: the host and every node. Connections of the host to pods arrive
        from here (from the host's address, or masqueraded to a node's by kube-proxy)."""
        return self.handle.state().node_cidr

    @property
    def pod_network(self) -> str:
        return self.handle.state().pod_network

    @property
    def server(self) -> str:
        return self.handle.state().server

    def env(self) -> dict[str, str]:
        return dict(os.environ, KUBECONFIG=str(self.kubeconfig))

    def _run(self, tool: str, args: tuple[str, ...], input: str | None, check: bool,
             timeout: float) -> subprocess.CompletedProcess:
        result = subprocess.run([str(self.bin_dir / tool), *args], input=input, capture_output=True,
                                text=True, env=self.env(), timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed ({result.returncode}):\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess:
        return self._run("kubectl", args, input, check, timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self._run("helm", args, None, check, timeout)

    def api_client(self) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))


@contextlib.contextmanager
def own_cluster(directory: Path, nodes: int | None = None) -> Iterator[DevCluster]:
    """A cluster of a test's own beside the session's (`nodes` real nodes, 0 = control plane
    only), whose Service names the test resolves while it runs; removed afterwards."""
    cluster.up(directory, nodes=nodes)
    handle = DevCluster(dir=directory.resolve(), bin_dir=build.bin_dir())
    try:
        with clusterdns.using(handle):
            yield handle
    finally:
        cluster.down(directory)
