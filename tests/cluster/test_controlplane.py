"""The devcluster control plane is a real one: version, controllers, scheduler, CRDs with CEL,
helm, PodSecurity admission, and a clean `down`."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import kubernetes
import pytest
import yaml

from devcluster import build, cluster
from tests.helpers.devcluster import DevCluster
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.cluster

TINY_CHART = Path(__file__).parent / "charts" / "tiny"
FAKE_NODE_TAINT = "devcluster-test/fake-node"


def test_server_version_is_the_pinned_release(devcluster: DevCluster) -> None:
    with devcluster.api_client() as client:
        version = kubernetes.client.VersionApi(client).get_code()
    pinned = build.KubeVersion.parse(build.KUBERNETES_VERSION)
    assert version.git_version == build.KUBERNETES_VERSION
    assert (version.major, version.minor) == (pinned.major, pinned.minor)


def _fake_node(name: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {FAKE_NODE_TAINT: name}},
        # tainted so that no other test's pods land on a node that runs nothing
        "spec": {"taints": [{"key": FAKE_NODE_TAINT, "value": name, "effect": "NoSchedule"}]},
    }


def _ready_node_status() -> dict:
    capacity = {"cpu": "4", "memory": "8Gi", "pods": "110"}
    return {"status": {
        "capacity": capacity, "allocatable": capacity,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "test node"}],
    }}


def _pinned_deployment(name: str, node: str, replicas: int) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {
            "replicas": replicas, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {
                "nodeSelector": {FAKE_NODE_TAINT: node},
                "tolerations": [{"key": FAKE_NODE_TAINT, "operator": "Equal", "value": node, "effect": "NoSchedule"}],
                # nothing runs these pods, so nothing would confirm a graceful deletion
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "main", "image": "example.invalid/idle:1", "command": ["sleep", "3600"]}],
            }},
        },
    }


def test_deployment_is_run_by_real_controllers_and_scheduler(devcluster: DevCluster, namespace: str) -> None:
    node = f"fake-{uuid.uuid4().hex[:6]}"
    with devcluster.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        apps = kubernetes.client.AppsV1Api(client)
        core.create_node(_fake_node(node))
        try:
            core.patch_node_status(node, _ready_node_status())
            apps.create_namespaced_deployment(namespace, _pinned_deployment("web", node, replicas=3))

            replica_sets = wait_for(
                lambda: apps.list_namespaced_replica_set(namespace, label_selector="app=web").items,
                30, "a ReplicaSet from the deployment controller")
            assert replica_sets[0].metadata.owner_references[0].kind == "Deployment"

            def bound_pods() -> list:
                pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
                return pods if len(pods) == 3 and all(p.spec.node_name == node for p in pods) else []

            pods = wait_for(bound_pods, 30, "3 pods bound to the fake node by kube-scheduler")
            assert {p.metadata.owner_references[0].kind for p in pods} == {"ReplicaSet"}

            apps.delete_namespaced_deployment("web", namespace)
            wait_for(lambda: not core.list_namespaced_pod(namespace, label_selector="app=web").items,
                     60, "the garbage collector to delete the deployment's pods")
            assert not apps.list_namespaced_replica_set(namespace, label_selector="app=web").items
        finally:
            core.delete_node(node)


CRD_GROUP = "devcluster.test"


def _widget_crd(plural: str) -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{CRD_GROUP}"},
        "spec": {
            "group": CRD_GROUP, "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": plural.capitalize()[:-1]},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {
                    "type": "object",
                    "properties": {"min": {"type": "integer"}, "max": {"type": "integer"}},
                    "x-kubernetes-validations": [
                        {"rule": "self.min <= self.max", "message": "spec.min must be <= spec.max"}],
                }},
            }}}],
        },
    }


def test_crd_is_served_and_its_cel_rule_rejects_a_bad_object(devcluster: DevCluster, namespace: str) -> None:
    plural = f"widgets{uuid.uuid4().hex[:6]}s"
    crd = _widget_crd(plural)
    kind = crd["spec"]["names"]["kind"]
    devcluster.kubectl("apply", "-f", "-", input=json.dumps(crd))
    try:
        devcluster.kubectl("wait", "--for=condition=Established", f"crd/{plural}.{CRD_GROUP}", "--timeout=30s")

        def apply(low: int, high: int) -> subprocess.CompletedProcess:
            item = {"apiVersion": f"{CRD_GROUP}/v1", "kind": kind, "metadata": {"name": f"w{low}{high}"},
                    "spec": {"min": low, "max": high}}
            return devcluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(item), check=False)

        good = wait_for(lambda: (r := apply(1, 2)).returncode == 0 and r, 30, "the CRD to be served")
        assert "created" in good.stdout
        listed = json.loads(devcluster.kubectl("get", plural, "-n", namespace, "-o", "json").stdout)
        assert [item["spec"] for item in listed["items"]] == [{"min": 1, "max": 2}]

        bad = apply(5, 2)
        assert bad.returncode != 0
        assert "spec.min must be <= spec.max" in bad.stderr
    finally:
        devcluster.kubectl("delete", "crd", f"{plural}.{CRD_GROUP}", "--wait=false")


def test_helm_template_install_and_uninstall(devcluster: DevCluster, namespace: str) -> None:
    rendered = devcluster.helm("template", "demo", str(TINY_CHART), "--set", "greeting=bonjour").stdout
    manifests = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert [(m["kind"], m["metadata"]["name"], m["data"]["greeting"]) for m in manifests] == [
        ("ConfigMap", "demo-tiny", "bonjour")]

    devcluster.helm("install", "demo", str(TINY_CHART), "-n", namespace, "--set", "greeting=hola", "--wait")
    with devcluster.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        assert core.read_namespaced_config_map("demo-tiny", namespace).data == {"greeting": "hola"}
        releases = json.loads(devcluster.helm("list", "-n", namespace, "-o", "json").stdout)
        assert [(r["name"], r["status"]) for r in releases] == [("demo", "deployed")]

        devcluster.helm("uninstall", "demo", "-n", namespace, "--wait")
        assert not core.list_namespaced_config_map(namespace, label_selector="app.kubernetes.io/instance=demo").items
        assert json.loads(devcluster.helm("list", "-n", namespace, "-o", "json").stdout) == []


def _privileged_pod() -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged"},
        "spec": {"containers": [{"name": "main", "image": "example.invalid/x:1", "command": ["true"],
                                 "securityContext": {"privileged": True}}]},
    }


def test_restricted_namespace_rejects_a_privileged_pod(devcluster: DevCluster, namespace: str) -> None:
    devcluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    rejected = devcluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_privileged_pod()),
                                  check=False)
    assert rejected.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in rejected.stderr
    assert "privileged" in rejected.stderr

    devcluster.kubectl("label", "--overwrite", "namespace", namespace, "pod-security.kubernetes.io/enforce=privileged")
    accepted = devcluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(_privileged_pod()),
                                  check=False)
    assert accepted.returncode == 0, accepted.stderr


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command_line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in command_line and state != "Z":
            found.append(int(entry.name))
    return found


def _devcluster_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "devcluster", *args], capture_output=True, text=True, timeout=180)


def test_second_cluster_side_by_side_then_down_leaves_no_process(devcluster: DevCluster, tmp_path: Path) -> None:
    directory = tmp_path / "second"
    started = _devcluster_cli("up", "--dir", str(directory))
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip().splitlines()[-1] == f"export KUBECONFIG={directory.resolve() / 'kubeconfig'}"
    second = cluster.Cluster(directory.resolve())
    pids = cluster.running_components(second)
    assert {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"} <= set(pids)
    assert second.state().apiserver_port != devcluster.handle.state().apiserver_port

    again = _devcluster_cli("up", "--dir", str(directory))
    assert again.returncode == 0, again.stderr
    assert cluster.running_components(second) == pids, "a second `up` must leave the running cluster be"

    assert _devcluster_cli("status", "--dir", str(directory)).returncode == 0
    stopped = _devcluster_cli("down", "--dir", str(directory))
    assert stopped.returncode == 0, stopped.stderr
    assert _processes_mentioning(str(directory.resolve())) == []
    assert cluster.running_components(second) == {}
    assert _devcluster_cli("status", "--dir", str(directory)).returncode != 0
    assert cluster.is_healthy(devcluster.handle), "the session's cluster must not be touched"
