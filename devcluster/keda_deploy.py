"""Run KEDA in a devcluster from its own config/: the operator and the metrics API server from the
locally built `keda` image, the CRDs and RBAC exactly as KEDA ships them.

The overlay is config/minimal: config/default without the admission webhooks, which we neither
build nor need. The operator makes the certificates itself (--enable-cert-rotation, in KEDA's
manifest) into the Secret kedaorg-certs and writes their CA into the APIService; the metrics
server's pod mounts that Secret, so it is applied once the operator has filled it. The
kube-controller-manager's HPA then reads external metrics through the API server's aggregation
layer (devcluster/pki.py's front-proxy certificates).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from devcluster import build, cluster, images, keda, nodes

OVERLAY = "minimal"
NAMESPACE = "keda"
OPERATOR = "keda-operator"
METRICS_SERVER = "keda-metrics-apiserver"  # the Deployment's name in KEDA's config/ (Helm's differs)
APISERVICE = "v1beta1.external.metrics.k8s.io"
CERTS_SECRET = "kedaorg-certs"
CERT_FILES = ("ca.crt", "tls.crt", "tls.key")
EXTERNAL_METRICS_PATH = "/apis/external.metrics.k8s.io/v1beta1"
# no ValidatingWebhookConfiguration exists to patch with the CA
NO_WEBHOOK_PATCHING = "--enable-webhook-patching=false"


# --- manifests (pure) -------------------------------------------------------------------------

def _is_keda_deployment(manifest: dict) -> bool:
    return manifest.get("kind") == "Deployment" and manifest["metadata"].get("namespace") == NAMESPACE


def local_manifests(rendered: list[dict], image: str) -> list[dict]:
    """KEDA's rendered config/ run from `image` (it holds /keda and /keda-adapter, which the
    Deployments' commands name), never pulled, and without webhook patching."""
    manifests = copy.deepcopy(rendered)
    for manifest in filter(_is_keda_deployment, manifests):
        for container in manifest["spec"]["template"]["spec"]["containers"]:
            container["image"] = image
            container["imagePullPolicy"] = "Never"
            if manifest["metadata"]["name"] == OPERATOR and NO_WEBHOOK_PATCHING not in container.get("args", []):
                container["args"] = [*container.get("args", []), NO_WEBHOOK_PATCHING]
    return manifests


def operator_first(manifests: list[dict]) -> tuple[list[dict], list[dict]]:
    """Everything but the metrics server's Deployment, and that Deployment: its pod mounts the
    certificates the operator writes once it runs."""
    def is_metrics_server(manifest: dict) -> bool:
        return _is_keda_deployment(manifest) and manifest["metadata"]["name"] == METRICS_SERVER

    return ([m for m in manifests if not is_metrics_server(m)], [m for m in manifests if is_metrics_server(m)])


def _condition_true(found: dict, condition: str) -> bool:
    return any(c.get("type") == condition and c.get("status") == "True"
               for c in found.get("status", {}).get("conditions", []))


def _holds_certificates(secret: dict) -> bool:
    data = secret.get("data") or {}
    return all(data.get(name) for name in CERT_FILES)


# --- I/O ----------------------------------------------------------------------------------------

class KedaDeployError(cluster.ClusterError):
    pass


def _kubectl(handle: cluster.Cluster, *args: str, input: str | None = None, check: bool = True,
             ) -> subprocess.CompletedProcess:
    result = subprocess.run([str(build.bin_dir() / "kubectl"), f"--kubeconfig={handle.kubeconfig}", *args],
                            input=input, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise KedaDeployError(f"kubectl {' '.join(args[:3])}: {result.stderr.strip()}")
    return result


def _get(handle: cluster.Cluster, *what: str) -> dict:
    result = _kubectl(handle, "get", *what, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else {}


def render_config(kubectl: Path | None = None) -> list[dict]:
    """config/minimal as `kubectl kustomize` renders it."""
    kubectl = kubectl or build.bin_dir() / "kubectl"
    result = subprocess.run([str(kubectl), "kustomize", str(keda.config_dir() / OVERLAY)],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise KedaDeployError(f"kubectl kustomize {keda.config_dir() / OVERLAY}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _apply(handle: cluster.Cluster, manifests: list[dict]) -> None:
    # server-side: KEDA's CRDs are too large for client-side apply's last-applied annotation
    _kubectl(handle, "apply", "--server-side", "--force-conflicts", "--field-manager=devcluster-keda",
             "-f", "-", input=yaml.safe_dump_all(manifests, sort_keys=False))


def _pods_report(handle: cluster.Cluster) -> str:
    return _kubectl(handle, "get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout.strip()


def _wait(handle: cluster.Cluster, description: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise KedaDeployError(f"timed out after {timeout:.0f}s waiting for {description}; "
                                  f"pods in {NAMESPACE}:\n{_pods_report(handle)}")
        time.sleep(1)


def load_image(handle: cluster.Cluster) -> images.Image:
    """The `keda` image, built when not cached, imported into every node's containerd."""
    keda.ensure()
    image = images.build_images(["keda"])["keda"]
    state = handle.state()
    for index in range(1, state.nodes + 1):
        nodes.load_images(nodes.Node(cluster_dir=handle.dir, network=state.network, index=index), [image])
    return image


def deploy(directory: Path, timeout: float = 300) -> cluster.Cluster:
    """KEDA running in the cluster in `directory` (which runs, with nodes): its Deployments
    Available and the external metrics API served through the aggregation layer. Idempotent."""
    handle = cluster.Cluster(directory.resolve())
    state = handle.state()
    if state is None or not state.nodes or not cluster.is_healthy(handle):
        raise KedaDeployError(f"no healthy devcluster with nodes in {handle.dir}: run `python -m devcluster up`")
    image = load_image(handle)
    operator, metrics_server = operator_first(local_manifests(render_config(), image.reference))
    _apply(handle, operator)
    _wait(handle, f"deployment {NAMESPACE}/{OPERATOR} to be available",
          lambda: _condition_true(_get(handle, "deployment", "-n", NAMESPACE, OPERATOR), "Available"), timeout)
    _wait(handle, f"the operator's certificates in secret {NAMESPACE}/{CERTS_SECRET}",
          lambda: _holds_certificates(_get(handle, "secret", "-n", NAMESPACE, CERTS_SECRET)), timeout)
    _apply(handle, metrics_server)
    _wait(handle, f"deployment {NAMESPACE}/{METRICS_SERVER} to be available",
          lambda: _condition_true(_get(handle, "deployment", "-n", NAMESPACE, METRICS_SERVER), "Available"), timeout)
    _wait(handle, f"apiservice {APISERVICE} to be available",
          lambda: _condition_true(_get(handle, "apiservice", APISERVICE), "Available"), timeout)
    return handle


def main(directory: Path) -> int:
    started = time.monotonic()
    try:
        deploy(directory)
    except (cluster.ClusterError, build.BuildError, images.ImageBuildError, nodes.ImageLoadFailed) as failure:
        print(f"devcluster keda-up: {failure}", file=sys.stderr)
        return 1
    print(f"devcluster keda-up: KEDA {keda.KEDA_VERSION} available in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0
