"""Pods on the devcluster's real nodes: time from Deployment create to all N pods Ready
(N = 1, 10, 50) from the locally built Debian base image, and the node's CPU use (kubelet,
containerd, kube-proxy and the containers' shims; user + system seconds per minute) while the
50 idle pods run.

    .venv/bin/python bench/bench_pods.py [--dir CLUSTER_DIR] [--sizes 1,10,50] [--idle-seconds 60]
                                         [--probes]

Without --dir a fresh devcluster is started in a temporary directory and stopped at the end;
with --dir an existing one is used (started if needed) and left running. --probes adds a row
for 50 idle pods that each have an exec readiness probe every 10 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import kubernetes

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import figures  # noqa: E402
from devcluster import cluster, images, network  # noqa: E402

IDLE_PROGRAM = "import time\nwhile True: time.sleep(3600)"


def deployment(name: str, replicas: int, probe: bool) -> dict:
    image = images.build_images(["debian-base"])["debian-base"].reference
    container: dict = {"name": "idle", "image": image, "command": ["python3", "-c", IDLE_PROGRAM],
                       "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                           "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
    if probe:
        container["readinessProbe"] = {"exec": {"command": ["true"]}, "periodSeconds": 10}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"bench": name}},
                 "template": {"metadata": {"labels": {"bench": name}},
                              "spec": {"terminationGracePeriodSeconds": 5, "containers": [container]}}},
    }


def ready_count(core: kubernetes.client.CoreV1Api, namespace: str, name: str) -> int:
    pods = core.list_namespaced_pod(namespace, label_selector=f"bench={name}").items
    return sum(1 for pod in pods if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []))


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def time_to_ready(client: kubernetes.client.ApiClient, namespace: str, name: str, replicas: int,
                  probe: bool = False) -> float:
    core, apps = kubernetes.client.CoreV1Api(client), kubernetes.client.AppsV1Api(client)
    started = time.monotonic()
    apps.create_namespaced_deployment(namespace, deployment(name, replicas, probe))
    wait_until(lambda: ready_count(core, namespace, name) == replicas, 300, f"{replicas} Ready pods")
    return time.monotonic() - started


def remove(client: kubernetes.client.ApiClient, namespace: str, name: str) -> None:
    core, apps = kubernetes.client.CoreV1Api(client), kubernetes.client.AppsV1Api(client)
    apps.delete_namespaced_deployment(name, namespace, propagation_policy="Foreground")
    wait_until(lambda: not core.list_namespaced_pod(namespace, label_selector=f"bench={name}").items, 300,
               "the pods to go", interval=0.5)
    wait_until(lambda: not apps.list_namespaced_deployment(namespace, field_selector=f"metadata.name={name}").items,
               60, "the Deployment to go", interval=0.2)


def node_pids(cluster_dir: Path) -> list[int]:
    """The node's own processes: kubelet, containerd, kube-proxy and the shims (not the containers)."""
    return network.netns_pids(cluster.Cluster(cluster_dir.resolve()).state().network.netns_path(1))


def cpu_seconds(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def node_cpu_per_minute(cluster_dir: Path, seconds: float) -> float:
    pids = node_pids(cluster_dir)
    before, started = sum(cpu_seconds(pid) for pid in pids), time.monotonic()
    time.sleep(seconds)
    used, elapsed = sum(cpu_seconds(pid) for pid in pids) - before, time.monotonic() - started
    return used * 60 / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--sizes", default="1,10,50")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--probes", action="store_true")
    figures.add_argument(parser)
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]

    own_dir = args.dir is None
    cluster_dir = Path(tempfile.mkdtemp(prefix="bench-pods-")) if own_dir else args.dir
    running = cluster.up(cluster_dir)
    rows: list[tuple[str, str]] = []
    headline: list[figures.Figure] = []
    try:
        client = kubernetes.config.new_client_from_config(config_file=str(running.kubeconfig))
        core = kubernetes.client.CoreV1Api(client)
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        core.create_namespace({"metadata": {"name": namespace}})
        # wait for the namespace's default ServiceAccount: pods are rejected until it exists
        wait_until(lambda: core.list_namespaced_service_account(namespace).items, 60, "the default ServiceAccount")
        try:
            def report(label: str, value: str) -> None:
                rows.append((label, value))
                print(f"{label}: {value}", file=sys.stderr, flush=True)

            for size in sizes:
                seconds = time_to_ready(client, namespace, f"bench-{size}", size)
                report(f"Deployment of {size} pod(s): create -> all Ready", f"{seconds:.2f} s")
                headline.append(figures.Figure(f"Deployment of {size} pod(s) on a real node: create → all Ready",
                                               seconds, "s"))
                if size == max(sizes):
                    time.sleep(5)  # let the start-up settle before measuring the idle cost
                    cpu = node_cpu_per_minute(cluster_dir, args.idle_seconds)
                    report(f"node CPU with {size} idle pods (user+sys)", f"{cpu:.2f} s/min")
                    headline.append(figures.Figure(f"node CPU with {size} idle pods (kubelet, containerd, "
                                                   "kube-proxy, shims)", cpu, "s per minute"))
                remove(client, namespace, f"bench-{size}")
            if args.probes:
                size = max(sizes)
                time_to_ready(client, namespace, "bench-probed", size, probe=True)
                time.sleep(5)
                cpu = node_cpu_per_minute(cluster_dir, args.idle_seconds)
                report(f"node CPU with {size} idle pods, exec readiness probe every 10 s", f"{cpu:.2f} s/min")
                headline.append(figures.Figure(f"node CPU with {size} idle pods, exec readiness probe every 10 s",
                                               cpu, "s per minute"))
                remove(client, namespace, "bench-probed")
        finally:
            core.delete_namespace(namespace)
    finally:
        if own_dir:
            cluster.down(cluster_dir)
            shutil.rmtree(cluster_dir, ignore_errors=True)
    width = max(len(label) for label, _ in rows)
    print(f"{'measurement':<{width}}  result")
    print(f"{'-' * width}  ------")
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    figures.report(args.figures, headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
