"""Start, stop and inspect a devcluster: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler as processes of this machine on free ports, and real nodes (devcluster/nodes.py)
on networks of the cluster's own (devcluster/network.py), all in one directory: everything the
cluster holds (data, certificates, logs, pid files) lives there."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import dataclasses
import fcntl
import ipaddress
import json
import os
import random
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from devcluster import addons, build, images, kuberouter, network, nodes, pki
from devcluster.network import ClusterNetwork
from devcluster.ports import free_port

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = PROJECT_ROOT / ".devcluster" / "default"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
STOP_ORDER = ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# Requests made with ServiceAccount tokens outside kube-system (pods' identities, an operator under
# test) go to DIR/logs/audit.log: benchmarks count them, RBAC tests read the denials. Of kube-system
# only the HPA controller's: what a KEDA-scaled workload costs includes them (bench/bench_keda.py).
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "users": ["system:serviceaccount:kube-system:horizontal-pod-autoscaler"]},
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}


class ClusterError(RuntimeError):
    pass


class ComponentExited(ClusterError):
    """A component stopped while starting: most often a port another process took first."""


# a component that exits at start is retried on fresh ports
START_ATTEMPTS = 3
DEFAULT_NODES = int(os.environ.get("DEVCLUSTER_NODES", "1"))


@dataclass
class ClusterState:
    etcd_port: int
    etcd_peer_port: int
    apiserver_port: int
    controller_manager_port: int
    scheduler_port: int
    service_cidr: str
    pod_network: str
    pids: dict[str, list[int]] = field(default_factory=dict)
    # real nodes (kubelet on containerd), each in a network namespace on the cluster's bridge;
    # 0 = the control plane alone
    nodes: int = 0
    node_cidr: str = ""
    cluster_id: str = ""
    # the image archives the nodes imported (their names hold the content's hash)
    images: list[str] = field(default_factory=list)

    @property
    def network(self) -> ClusterNetwork:
        return ClusterNetwork(id=self.cluster_id, node_cidr=self.node_cidr, pod_cidr=self.pod_network,
                              service_cidr=self.service_cidr)

    @property
    def apiserver_ip(self) -> str:
        """Where the API server listens: the bridge's address when nodes must reach it."""
        return self.network.gateway_ip if self.nodes else "127.0.0.1"

    @property
    def server(self) -> str:
        return f"https://{self.apiserver_ip}:{self.apiserver_port}"

    @property
    def node_names(self) -> list[str]:
        return [nodes.node_name(index) for index in range(1, self.nodes + 1)]

    @property
    def kubernetes_service_ip(self) -> str:
        return str(ipaddress.ip_network(self.service_cidr)[1])


@dataclass(frozen=True)
class Cluster:
    """A running (or stopped) cluster's directory and what its state file says."""

    dir: Path

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def pki_dir(self) -> Path:
        return self.dir / "pki"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def pids_dir(self) -> Path:
        return self.dir / "pids"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    def state(self) -> ClusterState | None:
        if not self.state_file.exists():
            return None
        recorded = json.loads(self.state_file.read_text())
        known = {f.name for f in fields(ClusterState)}  # a state file of an older devcluster
        return ClusterState(**{key: value for key, value in recorded.items() if key in known})

    def save(self, state: ClusterState) -> None:
        temporary = self.state_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(state), indent=2))
        temporary.replace(self.state_file)


# --- processes -----------------------------------------------------------------------------

def _process_start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot (field 22 of /proc/PID/stat), or None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _pid_file(cluster: Cluster, component: str) -> Path:
    return cluster.pids_dir / f"{component}.pid"


def _recorded_pid(cluster: Cluster, component: str) -> int | None:
    """The component's pid if the process that was started is still the one running."""
    path = _pid_file(cluster, component)
    try:
        pid_text, start_text = path.read_text().split()
    except (OSError, ValueError):
        return None
    pid = int(pid_text)
    _reap(pid)
    if _process_start_time(pid) != int(start_text):
        return None
    return pid


def _launch(cluster: Cluster, component: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    cluster.logs_dir.mkdir(parents=True, exist_ok=True)
    cluster.pids_dir.mkdir(parents=True, exist_ok=True)
    with (cluster.logs_dir / f"{component}.log").open("ab") as log:
        process = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=cluster.dir, env=env,
        )
    start = _process_start_time(process.pid)
    _pid_file(cluster, component).write_text(f"{process.pid} {start}\n")
    return process.pid


def _stop(cluster: Cluster, component: str, grace: float) -> None:
    pid = _recorded_pid(cluster, component)
    if pid is not None:
        _signal_group_then_kill(pid, grace)
    _pid_file(cluster, component).unlink(missing_ok=True)


def _signal_group_then_kill(pid: int, grace: float) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if _process_start_time(pid) is None:
            break
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _reap(pid)


# --- waiting -------------------------------------------------------------------------------

def _wait_until(description: str, check, timeout: float, cluster: Cluster, component: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if _recorded_pid(cluster, component) is None:
            raise ComponentExited(
                f"{component} exited while waiting for {description}; see {cluster.logs_dir / (component + '.log')}")
        time.sleep(0.1)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {description}; "
                       f"see {cluster.logs_dir / (component + '.log')}")


def _admin_ssl_context(cluster: Cluster) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cluster.pki_dir / "ca.crt"))
    context.load_cert_chain(str(cluster.pki_dir / "admin.crt"), str(cluster.pki_dir / "admin.key"))
    return context


def _http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _insecure_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _api_get(cluster: Cluster, state: ClusterState, path: str) -> dict | None:
    try:
        with urllib.request.urlopen(state.server + path, timeout=2, context=_admin_ssl_context(cluster)) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _api_delete(cluster: Cluster, state: ClusterState, path: str) -> None:
    request = urllib.request.Request(state.server + path, method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=5, context=_admin_ssl_context(cluster)):
            pass
    except (urllib.error.URLError, OSError):
        pass


def _kubernetes_service_points_here(cluster: Cluster, state: ClusterState) -> bool:
    """The `kubernetes` Service's endpoints name this start's port. The API server's lease
    reconciler keeps stale ones from a previous start (same address, older port), so they go."""
    endpoints = _api_get(cluster, state, "/api/v1/namespaces/default/endpoints/kubernetes") or {}
    ports = {p.get("port") for subset in endpoints.get("subsets", []) for p in subset.get("ports", [])}
    if ports == {state.apiserver_port}:
        return True
    if ports:
        _api_delete(cluster, state, "/api/v1/namespaces/default/endpoints/kubernetes")
        _api_delete(cluster, state, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes")
    return False


def _named_node_ready(cluster: Cluster, state: ClusterState, name: str) -> bool:
    node = _api_get(cluster, state, f"/api/v1/nodes/{name}")
    conditions = (node or {}).get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


# --- kubeconfigs ---------------------------------------------------------------------------

def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _write_kubeconfig(cluster: Cluster, state: ClusterState, path: Path, client_stem: str, user: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "devcluster", "cluster": {
            "server": state.server, "certificate-authority-data": _b64(cluster.pki_dir / "ca.crt")}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": _b64(cluster.pki_dir / f"{client_stem}.crt"),
            "client-key-data": _b64(cluster.pki_dir / f"{client_stem}.key")}}],
        "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": user}}],
        "current-context": "devcluster",
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(yaml.safe_dump(config, sort_keys=False))
    temporary.chmod(0o600)
    temporary.replace(path)


# --- command lines -------------------------------------------------------------------------

def _etcd_argv(bin_dir: Path, cluster: Cluster, state: ClusterState) -> list[str]:
    client = f"http://127.0.0.1:{state.etcd_port}"
    peer = f"http://127.0.0.1:{state.etcd_peer_port}"
    return [
        str(bin_dir / "etcd"), "--name=devcluster", f"--data-dir={cluster.dir / 'etcd'}",
        f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=devcluster={peer}", "--log-level=warn",
        # test infrastructure: durability across power loss is not worth the fsync latency
        "--unsafe-no-fsync",
    ]


def _apiserver_argv(bin_dir: Path, cluster: Cluster, state: ClusterState) -> list[str]:
    tls = cluster.pki_dir
    argv = [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{state.etcd_port}",
        f"--bind-address={state.apiserver_ip}", f"--secure-port={state.apiserver_port}",
        f"--advertise-address={state.apiserver_ip}",
        f"--tls-cert-file={tls / 'apiserver.crt'}", f"--tls-private-key-file={tls / 'apiserver.key'}",
        f"--client-ca-file={tls / 'ca.crt'}",
        f"--kubelet-client-certificate={tls / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={tls / 'apiserver-kubelet-client.key'}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={tls / 'sa.pub'}",
        f"--service-account-signing-key-file={tls / 'sa.key'}",
        f"--service-cluster-ip-range={state.service_cidr}",
        "--authorization-mode=Node,RBAC",
        # privileged pods pass the API server itself, so PodSecurity admission is what rejects them
        "--allow-privileged=true",
        f"--cert-dir={cluster.dir / 'apiserver-certs'}",
        f"--audit-policy-file={cluster.dir / 'audit-policy.yaml'}",
        f"--audit-log-path={cluster.logs_dir / 'audit.log'}", "--audit-log-format=json",
        "--audit-log-maxsize=200", "--audit-log-maxbackup=1",
        # the aggregation layer: extension API servers (KEDA's external metrics) behind this one
        f"--requestheader-client-ca-file={tls / (pki.FRONT_PROXY_CA_STEM + '.crt')}",
        f"--requestheader-allowed-names={pki.FRONT_PROXY_CLIENT.common_name}",
        "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={tls / (pki.FRONT_PROXY_CLIENT.file_stem + '.crt')}",
        f"--proxy-client-key-file={tls / (pki.FRONT_PROXY_CLIENT.file_stem + '.key')}",
        "--profiling=false", "--v=1",
    ]
    if state.nodes:
        argv += [
            # logs, exec and port-forward: the API server dials the kubelet at the node's address
            "--kubelet-preferred-address-types=InternalIP",
            # pods of a lost node are replaced after seconds, not the default five minutes
            "--default-not-ready-toleration-seconds=10", "--default-unreachable-toleration-seconds=10",
        ]
    else:
        # the only "node" is this machine's loopback: no endpoint for the kubernetes Service
        argv.append("--endpoint-reconciler-type=none")
    return argv


def _component_kubeconfig_flags(path: Path) -> list[str]:
    return [f"--kubeconfig={path}", f"--authentication-kubeconfig={path}", f"--authorization-kubeconfig={path}"]


def _controller_manager_argv(bin_dir: Path, cluster: Cluster, state: ClusterState) -> list[str]:
    tls = cluster.pki_dir
    return [
        str(bin_dir / "kube-controller-manager"),
        *_component_kubeconfig_flags(cluster.dir / "controller-manager.kubeconfig"),
        "--bind-address=127.0.0.1", f"--secure-port={state.controller_manager_port}",
        f"--root-ca-file={tls / 'ca.crt'}", f"--service-account-private-key-file={tls / 'sa.key'}",
        "--use-service-account-credentials=true",
        f"--cluster-signing-cert-file={tls / 'ca.crt'}", f"--cluster-signing-key-file={tls / 'ca.key'}",
        f"--service-cluster-ip-range={state.service_cidr}",
        "--controllers=*", "--leader-elect=false", "--cluster-name=devcluster",
        "--kube-api-qps=200", "--kube-api-burst=400", "--v=1",
        # what the garbage collector watches, and why an item waits (V5: an owner kind it cannot map yet)
        "--vmodule=garbagecollector=5",
        # a node whose kubelet stopped is NotReady after 16 s (its lease lasts 16 s)
        "--node-monitor-grace-period=16s", "--node-monitor-period=2s",
    ]


def _scheduler_argv(bin_dir: Path, cluster: Cluster, state: ClusterState) -> list[str]:
    return [
        str(bin_dir / "kube-scheduler"),
        *_component_kubeconfig_flags(cluster.dir / "scheduler.kubeconfig"),
        "--bind-address=127.0.0.1", f"--secure-port={state.scheduler_port}",
        "--leader-elect=false", "--v=1",
    ]


# --- up / down / status ---------------------------------------------------------------------

def _pick_networks() -> tuple[str, str, str]:
    """A Service CIDR, a pod network and a node network no running cluster on this machine uses.

    Pod IPs are outside 127/8: EndpointSlice validation refuses loopback addresses.
    """
    in_use = network.addresses_in_use()
    octets = list(range(100, 150))
    random.shuffle(octets)
    for octet in octets:
        candidates = (f"10.{octet}.0.0/16", f"10.{octet + 100}.0.0/16", f"10.{octet + 50}.0.0/24")
        if not any(ipaddress.ip_network(c).overlaps(used) for c in candidates for used in in_use):
            return candidates
    raise ClusterError("no free network for another cluster: are 50 of them running?")


def _fresh_state(cluster: Cluster, previous: ClusterState | None, node_count: int) -> ClusterState:
    """New ports every start; the networks and node name stay those of the cluster's data."""
    if previous and previous.node_cidr:
        service_cidr, pod_network, node_cidr = previous.service_cidr, previous.pod_network, previous.node_cidr
    else:
        service_cidr, pod_network, node_cidr = _pick_networks()
    return ClusterState(
        etcd_port=free_port(), etcd_peer_port=free_port(), apiserver_port=free_port(),
        controller_manager_port=free_port(), scheduler_port=free_port(),
        service_cidr=service_cidr, pod_network=pod_network,
        nodes=node_count, node_cidr=node_cidr, cluster_id=network.cluster_id(cluster.dir),
    )


def _node_handles(cluster: Cluster, state: ClusterState) -> list[nodes.Node]:
    return [nodes.Node(cluster_dir=cluster.dir, network=state.network, index=index)
            for index in range(1, state.nodes + 1)]


def _load_new_builds(cluster: Cluster, state: ClusterState) -> None:
    """A running cluster reused after images were built again (a change to the operator, make demo
    once more): its nodes import the new builds, under the tags they already knew."""
    built = images.build_images()
    new = [image for image in built.values() if image.archive.name not in state.images]
    if new:
        load_images(cluster, new)
        cluster.save(dataclasses.replace(state, images=sorted({*state.images, *(i.archive.name for i in new)})))


def load_images(cluster: Cluster, archives: list[images.Image]) -> None:
    """Import more images into every node of a running cluster (one it did not start with, such as
    a previous release's operator)."""
    state = cluster.state()
    if state is None:
        raise ClusterError(f"no cluster in {cluster.dir}")
    for node in _node_handles(cluster, state):
        nodes.load_images(node, archives)


def tag_image(cluster: Cluster, source: str, target: str) -> None:
    """Give an image every node holds a second reference (an image "released" under a new name,
    for a test that changes an image setting without building another image)."""
    state = cluster.state()
    if state is None:
        raise ClusterError(f"no cluster in {cluster.dir}")
    for node in _node_handles(cluster, state):
        result = nodes.ctr(node, "images", "tag", "--force", source, target)
        if result.returncode != 0:
            raise ClusterError(f"{node.name}: tagging {source} as {target}: {result.stderr.strip()}")


def _expected_components(state: ClusterState) -> list[str]:
    names = list(COMPONENTS)
    for index in range(1, state.nodes + 1):
        names += [f"node{index}-{component}" for component in nodes.NODE_COMPONENTS]
    return names


def running_components(cluster: Cluster) -> dict[str, int]:
    found = {}
    names = [path.stem for path in sorted(cluster.pids_dir.glob("*.pid"))] if cluster.pids_dir.is_dir() else []
    for component in names:
        pid = _recorded_pid(cluster, component)
        if pid is not None:
            found[component] = pid
    return found


def is_healthy(cluster: Cluster) -> bool:
    state = cluster.state()
    if state is None:
        return False
    if set(running_components(cluster)) != set(_expected_components(state)):
        return False
    return _http_ok(state.server + "/readyz", _admin_ssl_context(cluster))


@contextlib.contextmanager
def _exclusive(directory: Path):
    """One `up` or `down` at a time per cluster directory (a second waits for the first)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _claiming_networks() -> Iterator[None]:
    """One cluster at a time picks its networks and brings up its bridge, which claims them: clusters
    started side by side (parallel test workers) never pick the same subnets."""
    nodes.RUN_ROOT.mkdir(parents=True, exist_ok=True)
    with (nodes.RUN_ROOT / ".networks.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def up(directory: Path = DEFAULT_DIR, nodes: int | None = None, timeout: float = 180) -> Cluster:
    """Start the cluster in `directory` with `nodes` real nodes (kubelet on containerd; 0 = the
    control plane alone), or leave it be if it already runs healthily so."""
    with _exclusive(directory.resolve()):
        return _up(directory, DEFAULT_NODES if nodes is None else nodes, timeout)


def _up(directory: Path, node_count: int, timeout: float) -> Cluster:
    cluster = Cluster(directory.resolve())
    current = cluster.state()
    if is_healthy(cluster) and current.nodes == node_count:
        if node_count:
            _load_new_builds(cluster, current)
        return cluster
    bin_dir = build.build()
    if node_count:
        kuberouter.ensure()
    built = images.build_images() if node_count else {}
    _down(cluster.dir)
    cluster.dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            with _claiming_networks():
                state = _prepare(cluster, node_count)
                if node_count:
                    network.setup_bridge(state.network)
            _start_control_plane(cluster, state, bin_dir, timeout)
            if node_count:
                _start_nodes(cluster, state, bin_dir, built, timeout)
                _start_addons(cluster, state, built, timeout)
            return cluster
        except ComponentExited:
            _down(cluster.dir)
            if attempt == START_ATTEMPTS:
                raise
        except BaseException:
            _down(cluster.dir)
            raise
    raise AssertionError("unreachable")


def _prepare(cluster: Cluster, node_count: int) -> ClusterState:
    """Fresh ports, and everything the components read written to the cluster's directory."""
    state = _fresh_state(cluster, cluster.state(), node_count)
    pki.ensure_pki(cluster.pki_dir, state.kubernetes_service_ip, (state.network.gateway_ip,))
    _write_kubeconfig(cluster, state, cluster.kubeconfig, "admin", "devcluster-admin")
    _write_kubeconfig(cluster, state, cluster.dir / "controller-manager.kubeconfig",
                      "controller-manager", "system:kube-controller-manager")
    _write_kubeconfig(cluster, state, cluster.dir / "scheduler.kubeconfig", "scheduler", "system:kube-scheduler")
    (cluster.dir / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
    cluster.save(state)
    return state


def _start_nodes(cluster: Cluster, state: ClusterState, bin_dir: Path, built: dict[str, images.Image],
                 timeout: float) -> None:
    handles = _node_handles(cluster, state)
    pki.ensure_client(cluster.pki_dir, KUBE_ROUTER_IDENTITY)
    for node in handles:
        network.setup_node(state.network, node.index, state.nodes)
        nodes.prepare(node, cluster.pki_dir / "ca.crt", built["pause"].reference)
        identity = pki.node_identity(node.name)
        pki.ensure_client(cluster.pki_dir, identity)
        _write_kubeconfig(cluster, state, node.kubelet_kubeconfig, identity.file_stem, identity.common_name)
        _write_kubeconfig(cluster, state, node.proxy_kubeconfig, "kube-proxy", "system:kube-proxy")
        _write_kubeconfig(cluster, state, node.router_kubeconfig, KUBE_ROUTER_IDENTITY.file_stem, kuberouter.USER)
    _kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", "-",
             input=addons.as_yaml(kuberouter.rbac_manifests()))
    network.route_services(state.network)
    _wait_until("the kubernetes Service's endpoints", lambda: _kubernetes_service_points_here(cluster, state),
                timeout, cluster, "kube-apiserver")
    for node in handles:
        _launch(cluster, node.component("containerd"), nodes.command_lines(node, bin_dir)["containerd"])
    for node in handles:
        _wait_until(f"containerd of {node.name}", lambda: nodes.containerd_answers(node), timeout, cluster,
                    node.component("containerd"))
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(handles)) as pool:
        imports = [pool.submit(nodes.load_images, node, list(built.values())) for node in handles]
        for node in handles:
            lines = nodes.command_lines(node, bin_dir)
            _launch(cluster, node.component("kubelet"), lines["kubelet"])
            _launch(cluster, node.component("kube-proxy"), lines["kube-proxy"])
        for node in handles:
            _wait_until(f"node {node.name} to be Ready", lambda: _named_node_ready(cluster, state, node.name),
                        timeout, cluster, node.component("kubelet"))
            # it reads its Node at start, so it starts once the kubelet has registered it
            _launch(cluster, node.component("kube-router"), nodes.command_lines(node, bin_dir)["kube-router"])
        for node in handles:
            _wait_until(f"kube-router of {node.name}", lambda: _http_ok(kube_router_health_url(node)),
                        timeout, cluster, node.component("kube-router"))
        for loading in imports:
            loading.result()
    cluster.save(dataclasses.replace(cluster.state(), images=sorted(image.archive.name for image in built.values())))


KUBE_ROUTER_IDENTITY = pki.ClientIdentity("kube-router", kuberouter.USER)


def kube_router_health_url(node: nodes.Node) -> str:
    """Healthy once its informers synced and its policy controller reports in."""
    return f"http://{node.ip}:{kuberouter.HEALTH_PORT}/healthz"


def _start_addons(cluster: Cluster, state: ClusterState, built: dict[str, images.Image], timeout: float) -> None:
    node_paths = {node.name: node.dir / "volumes" for node in _node_handles(cluster, state)}
    manifests = addons.coredns_manifests(built["coredns"].reference, state.network.dns_ip)
    manifests += addons.local_path_manifests(built["local-path-provisioner"].reference,
                                             built["debian-base"].reference, node_paths)
    _kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", "-", input=addons.as_yaml(manifests))
    for namespace, name in ((addons.DNS_NAMESPACE, "coredns"), (addons.STORAGE_NAMESPACE, "local-path-provisioner")):
        _wait_until(f"deployment {namespace}/{name} to be available",
                    lambda: _deployment_available(cluster, state, namespace, name), timeout, cluster, "kube-apiserver")


def _kubectl(cluster: Cluster, *args: str, input: str | None = None) -> str:
    result = subprocess.run([str(build.bin_dir() / "kubectl"), f"--kubeconfig={cluster.kubeconfig}", *args],
                            input=input, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _deployment_available(cluster: Cluster, state: ClusterState, namespace: str, name: str) -> bool:
    found = _api_get(cluster, state, f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}") or {}
    conditions = found.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Available" and c.get("status") == "True" for c in conditions)


def _start_control_plane(cluster: Cluster, state: ClusterState, bin_dir: Path, timeout: float) -> None:
    admin = _admin_ssl_context(cluster)
    _launch(cluster, "etcd", _etcd_argv(bin_dir, cluster, state))
    _wait_until("etcd health", lambda: _http_ok(f"http://127.0.0.1:{state.etcd_port}/health"),
                timeout, cluster, "etcd")
    _launch(cluster, "kube-apiserver", _apiserver_argv(bin_dir, cluster, state))
    _wait_until("kube-apiserver /readyz", lambda: _http_ok(state.server + "/readyz", admin),
                timeout, cluster, "kube-apiserver")
    _launch(cluster, "kube-controller-manager", _controller_manager_argv(bin_dir, cluster, state))
    _launch(cluster, "kube-scheduler", _scheduler_argv(bin_dir, cluster, state))
    insecure = _insecure_context()
    _wait_until("kube-controller-manager /healthz",
                lambda: _http_ok(f"https://127.0.0.1:{state.controller_manager_port}/healthz", insecure),
                timeout, cluster, "kube-controller-manager")
    _wait_until("kube-scheduler /healthz",
                lambda: _http_ok(f"https://127.0.0.1:{state.scheduler_port}/healthz", insecure),
                timeout, cluster, "kube-scheduler")
    _wait_until("the default ServiceAccount",
                lambda: _api_get(cluster, state, "/api/v1/namespaces/default/serviceaccounts/default") is not None,
                timeout, cluster, "kube-controller-manager")


def down(directory: Path = DEFAULT_DIR) -> list[str]:
    """Stop every process the cluster in `directory` started and remove what its nodes made on
    this machine (namespaces, interfaces, routes, rules, mounts); the names of those stopped."""
    if not directory.exists():  # what a crashed cluster left on the machine is still found by its id
        return _down(directory)
    with _exclusive(directory.resolve()):
        return _down(directory)


def _down(directory: Path) -> list[str]:
    cluster = Cluster(directory.resolve())
    running = running_components(cluster)
    node_components = sorted((c for c in running if c.startswith("node")), key=_node_stop_rank)
    stopped = [c for c in node_components + list(STOP_ORDER) if c in running]
    for component in node_components:
        _stop(cluster, component, grace=10)
    identifier = network.cluster_id(cluster.dir)
    nodes.kill_everything(identifier, cluster.dir)
    network.teardown(identifier)
    shutil.rmtree(nodes.RUN_ROOT / identifier, ignore_errors=True)
    # the nodes' containerd content (every image imported, ~1.5 GB a node) and their volumes: left
    # behind, a few test sessions fill the disk and the next cluster's kubelet collects its images
    shutil.rmtree(cluster.dir / "nodes", ignore_errors=True)
    for component in STOP_ORDER:
        _stop(cluster, component, grace=5)
    # and the objects with them: kept, a cluster brought up again here (after a reboot, or when it was
    # found unhealthy) would resurrect PersistentVolumes whose directories went with the nodes above
    shutil.rmtree(cluster.dir / "etcd", ignore_errors=True)
    return stopped


def stop_node(directory: Path, index: int) -> None:
    """Node `index` fails as a machine would: its kubelet, kube-proxy and containerd stop and every
    container on it dies, without any goodbye to the API server."""
    cluster = Cluster(directory.resolve())
    state = cluster.state()
    node = nodes.Node(cluster_dir=cluster.dir, network=state.network, index=index)
    for component in nodes.NODE_COMPONENTS:
        pid = _recorded_pid(cluster, node.component(component))
        if pid is not None:
            os.killpg(pid, signal.SIGKILL)
    nodes.kill_node(node)
    # the host reaches Services through one node's kube-proxy, like a load balancer in front of
    # the nodes: it moves to a node that still runs
    survivors = [other for other in range(1, state.nodes + 1) if other != index]
    if survivors:
        network.route_services(state.network, via_index=survivors[0])


def restart_apiserver(directory: Path, down_seconds: float = 10, timeout: float = 120) -> None:
    """The API server goes away as in a control-plane upgrade: its process stops (SIGTERM, then
    SIGKILL), stays away `down_seconds` counted from the SIGTERM, and starts again with the same
    flags, address and certificates; returns once it answers /readyz. etcd, the controllers, the
    nodes and every client keep running and have to reconnect by themselves.

    On SIGTERM the server stops listening at once, then lingers for its open watches until killed:
    that time is part of the outage, not added to it."""
    with _exclusive(directory.resolve()):
        cluster = Cluster(directory.resolve())
        state = cluster.state()
        pid = _recorded_pid(cluster, "kube-apiserver")
        if state is None or pid is None:
            raise ClusterError(f"no running kube-apiserver in {cluster.dir}")
        # the command line it runs with, not _apiserver_argv's of today: a cluster kept running
        # across a change of the flags (DEVCLUSTER_DIR) may lack what newer flags need
        argv = [part.decode() for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if part]
        stopped_at = time.monotonic()
        _stop(cluster, "kube-apiserver", grace=min(10.0, down_seconds))
        # the outage itself: clients meet a refused connection meanwhile
        time.sleep(max(0.0, down_seconds - (time.monotonic() - stopped_at)))
        _launch(cluster, "kube-apiserver", argv)
        admin = _admin_ssl_context(cluster)
        _wait_until("kube-apiserver /readyz", lambda: _http_ok(state.server + "/readyz", admin),
                    timeout, cluster, "kube-apiserver")


def _node_stop_rank(component: str) -> tuple[int, str]:
    order = {"kube-router": 0, "kube-proxy": 0, "kubelet": 1, "containerd": 2}
    return order.get(component.split("-", 1)[1], 3), component


def status(directory: Path = DEFAULT_DIR) -> dict[str, object]:
    cluster = Cluster(directory.resolve())
    state = cluster.state()
    running = running_components(cluster)
    report: dict[str, object] = {
        "dir": str(cluster.dir),
        "components": {name: (f"running (pid {running[name]})" if name in running else "stopped")
                       for name in (_expected_components(state) if state else COMPONENTS)},
    }
    if state is not None:
        report["server"] = state.server
        report["kubeconfig"] = str(cluster.kubeconfig)
        report["ready"] = is_healthy(cluster)
    return report
