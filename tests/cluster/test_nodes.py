"""The devcluster's nodes are real ones: a kubelet on containerd per node, images built here,
pod networking and cluster DNS, Services through kube-proxy, volumes from a real provisioner,
`kubectl logs` and `exec`, and a `down` that leaves nothing behind."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from devcluster import cluster, images, network, nodes
from tests.helpers.devcluster import DevCluster
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.cluster


def base_image() -> str:
    return images.build_images(["debian-base"])["debian-base"].reference


def _restricted(command: list[str], extra: dict | None = None) -> dict:
    return {
        "name": "main", "image": base_image(), "imagePullPolicy": "IfNotPresent", "command": command,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"},
                            "readOnlyRootFilesystem": True},
        **(extra or {}),
    }


def run_pod(devcluster: DevCluster, namespace: str, name: str, command: list[str], **spec) -> dict:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [_restricted(command, spec.pop("container", None))],
                     **spec}}
    devcluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body))
    return body


def pod(devcluster: DevCluster, namespace: str, name: str) -> dict:
    return json.loads(devcluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)


def wait_running(devcluster: DevCluster, namespace: str, name: str, timeout: float = 90) -> dict:
    def running() -> dict | None:
        found = pod(devcluster, namespace, name)
        return found if found["status"].get("phase") == "Running" else None
    return wait_for(running, timeout, f"pod {namespace}/{name} to run")


def test_every_node_is_a_kubelet_on_containerd(devcluster: DevCluster) -> None:
    listed = json.loads(devcluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert {n["metadata"]["name"] for n in listed} == set(devcluster.node_names)
    for node in listed:
        info = node["status"]["nodeInfo"]
        assert info["containerRuntimeVersion"].startswith("containerd://")
        assert info["kubeletVersion"] == "v1.35.4"
        address = {a["type"]: a["address"] for a in node["status"]["addresses"]}["InternalIP"]
        assert not address.startswith("127.")


def test_logs_and_exec_reach_a_running_container(devcluster: DevCluster, namespace: str) -> None:
    run_pod(devcluster, namespace, "talker", ["sh", "-c", "echo hello from $(id -u); exec sleep 3600"])
    wait_running(devcluster, namespace, "talker")
    logs = wait_for(lambda: devcluster.kubectl("logs", "-n", namespace, "talker").stdout, 30, "the log line")
    assert "hello from 10001" in logs
    result = devcluster.kubectl("exec", "-n", namespace, "talker", "--", "sh", "-c", "id -u; touch /x", check=False)
    assert result.stdout.strip() == "10001"
    assert "Read-only file system" in result.stderr


def test_pods_reach_services_by_name_and_the_host_reaches_them_too(devcluster: DevCluster, namespace: str) -> None:
    # a tiny HTTP server in the base image's python3, behind a Service
    run_pod(devcluster, namespace, "web", ["python3", "-m", "http.server", "8080", "--directory", "/etc"])
    devcluster.kubectl("expose", "pod", "web", "-n", namespace, "--port", "80", "--target-port", "8080")
    wait_running(devcluster, namespace, "web")
    run_pod(devcluster, namespace, "client", ["sh", "-c", "exec sleep 3600"])
    wait_running(devcluster, namespace, "client")
    fetch = ("import urllib.request,sys;"
             f"print(urllib.request.urlopen('http://web.{namespace}.svc/hostname', timeout=3).read().decode())")
    answer = wait_for(lambda: devcluster.kubectl("exec", "-n", namespace, "client", "--", "python3", "-c", fetch,
                                                 check=False).stdout, 60, "the Service by name from a pod")
    assert "web" in answer
    # the test session resolves cluster names (hostdns) and routes to Services through a node
    address = socket.getaddrinfo(f"web.{namespace}.svc", 80, socket.AF_INET)[0][4][0]
    with socket.create_connection((address, 80), timeout=5) as connection:
        connection.sendall(f"GET /hostname HTTP/1.0\r\nHost: web.{namespace}.svc\r\n\r\n".encode())
        assert b"200 OK" in connection.recv(4096)


def test_a_claim_binds_to_a_node_directory_and_keeps_its_data(devcluster: DevCluster, namespace: str) -> None:
    claim = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}}}
    devcluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(claim))
    mount = {"volumeMounts": [{"name": "data", "mountPath": "/data"}]}
    volumes = [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]
    run_pod(devcluster, namespace, "writer", ["sh", "-c", "echo kept > /data/file; exec sleep 3600"],
            container=mount, volumes=volumes)
    wait_running(devcluster, namespace, "writer", timeout=120)
    bound = json.loads(devcluster.kubectl("get", "pvc", "data", "-n", namespace, "-o", "json").stdout)
    assert bound["status"]["phase"] == "Bound"
    devcluster.kubectl("delete", "pod", "writer", "-n", namespace, "--wait=true")
    run_pod(devcluster, namespace, "reader", ["sh", "-c", "cat /data/file; exec sleep 3600"],
            container=mount, volumes=volumes)
    wait_running(devcluster, namespace, "reader", timeout=120)
    assert wait_for(lambda: devcluster.kubectl("logs", "-n", namespace, "reader").stdout, 30, "the log") == "kept\n"


def test_two_clusters_side_by_side_resolve_the_same_name_to_their_own_service(
        devcluster: DevCluster, tmp_path: Path) -> None:
    other_dir = tmp_path / "other"
    other = cluster.up(other_dir, nodes=1)
    try:
        second = DevCluster(dir=other.dir, bin_dir=devcluster.bin_dir)
        for handle, marker in ((devcluster, "first"), (second, "second")):
            handle.kubectl("create", "namespace", "side", check=False)
            run_pod(handle, "side", "web", ["sh", "-c", f"mkdir -p /tmp/w && echo {marker} > /tmp/w/who && "
                                                        "exec python3 -m http.server 8080 --directory /tmp/w"],
                    container={"volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]},
                    volumes=[{"name": "tmp", "emptyDir": {}}])
            handle.kubectl("expose", "pod", "web", "-n", "side", "--port", "80", "--target-port", "8080", check=False)
        for handle, marker in ((devcluster, "first"), (second, "second")):
            wait_running(handle, "side", "web")
            run_pod(handle, "side", "client", ["sh", "-c", "exec sleep 3600"])
            wait_running(handle, "side", "client")
            fetch = "import urllib.request;print(urllib.request.urlopen('http://web.side.svc/who', timeout=3).read())"
            answer = wait_for(lambda: handle.kubectl("exec", "-n", "side", "client", "--", "python3", "-c", fetch,
                                                     check=False).stdout, 60, "its own Service")
            assert marker in answer
        # and a pod of one cluster cannot reach a pod of the other even by address
        target = pod(second, "side", "web")["status"]["podIP"]
        probe = (f"import socket;socket.create_connection(('{target}', 8080), timeout=2)")
        result = devcluster.kubectl("exec", "-n", "side", "client", "--", "python3", "-c", probe, check=False)
        assert result.returncode != 0
    finally:
        devcluster.kubectl("delete", "namespace", "side", "--wait=false", check=False)
        cluster.down(other_dir)
    identifier = network.cluster_id(other_dir)
    assert not list(Path("/run/netns").glob(f"dc{identifier}n*")), "down removes the node namespaces"
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"dc{identifier}" not in links, "down removes the bridge and the veths"
    rules = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
    assert f"devcluster:{identifier}" not in rules
    mounts = Path("/proc/1/mounts").read_text()
    assert str(other_dir.resolve()) not in mounts and str(nodes.RUN_ROOT / identifier) not in mounts
    assert not (other_dir / "nodes").exists(), "down removes the nodes' images and volumes"
