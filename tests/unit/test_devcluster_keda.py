"""devcluster/keda_deploy.py's pure parts: KEDA's rendered config/ pointed at the local image, and
the order it is applied in."""

from __future__ import annotations

import pytest

from devcluster import keda_deploy

pytestmark = pytest.mark.unit

IMAGE = "devcluster.local/keda:2.21.0"


def _deployment(name: str, image: str, command: str, args: list[str]) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "keda"},
            "spec": {"template": {"spec": {"containers": [
                {"name": name, "image": image, "imagePullPolicy": "Always", "command": [command], "args": args}]}}}}


def _rendered() -> list[dict]:
    """The shape of `kubectl kustomize config/minimal`, cut down."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "keda"}},
        {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
         "metadata": {"name": "scaledobjects.keda.sh"}},
        _deployment("keda-metrics-apiserver", "ghcr.io/kedacore/keda-metrics-apiserver:main", "/keda-adapter",
                    ["--secure-port=6443"]),
        _deployment("keda-operator", "ghcr.io/kedacore/keda:main", "/keda", ["--enable-cert-rotation=true"]),
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
         "metadata": {"name": "v1beta1.external.metrics.k8s.io"}},
    ]


def _containers(manifests: list[dict]) -> dict[str, dict]:
    return {m["metadata"]["name"]: m["spec"]["template"]["spec"]["containers"][0]
            for m in manifests if m["kind"] == "Deployment"}


def test_both_deployments_run_the_local_image_and_never_pull() -> None:
    containers = _containers(keda_deploy.local_manifests(_rendered(), IMAGE))
    assert {name: (c["image"], c["imagePullPolicy"]) for name, c in containers.items()} == {
        "keda-operator": (IMAGE, "Never"), "keda-metrics-apiserver": (IMAGE, "Never")}
    # KEDA's own commands stay: the image holds both binaries at those paths
    assert containers["keda-operator"]["command"] == ["/keda"]
    assert containers["keda-metrics-apiserver"]["command"] == ["/keda-adapter"]


def test_the_operator_rotates_certificates_but_patches_no_webhook() -> None:
    manifests = keda_deploy.local_manifests(keda_deploy.local_manifests(_rendered(), IMAGE), IMAGE)
    operator_args = _containers(manifests)["keda-operator"]["args"]
    assert operator_args == ["--enable-cert-rotation=true", "--enable-webhook-patching=false"]  # once, however often
    assert _containers(manifests)["keda-metrics-apiserver"]["args"] == ["--secure-port=6443"]


def test_the_rendered_config_is_left_untouched() -> None:
    rendered = _rendered()
    keda_deploy.local_manifests(rendered, IMAGE)
    assert rendered == _rendered()


def test_the_metrics_server_comes_after_everything_else() -> None:
    first, then = keda_deploy.operator_first(keda_deploy.local_manifests(_rendered(), IMAGE))
    assert [m["metadata"]["name"] for m in then] == ["keda-metrics-apiserver"]
    assert [m["kind"] for m in first] == ["Namespace", "CustomResourceDefinition", "Deployment", "APIService"]
    assert first[2]["metadata"]["name"] == "keda-operator"
