from __future__ import annotations

import subprocess
import sys

import pytest

from devcluster import build

pytestmark = pytest.mark.unit


def test_staging_modules_are_the_ones_pinned_at_v0_0_0() -> None:
    gomod = "require (\n\tk8s.io/api v0.0.0\n\tk8s.io/utils v0.0.0-20251002143259-bc988d571ff4\n\tk8s.io/kubectl v0.0.0\n)\n"
    assert build._staging_modules(gomod) == ["k8s.io/api", "k8s.io/kubectl"]


def test_release_tag_maps_to_the_staging_tag() -> None:
    version = build.KubeVersion.parse("v1.35.4")
    assert (version.major, version.minor, version.staging_tag) == ("1", "35", "v0.35.4")
    with pytest.raises(ValueError):
        build.KubeVersion.parse("1.35")


def test_version_ldflags_stamp_both_version_packages() -> None:
    flags = build._kube_ldflags("v1.35.4")
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert f"-X {package}.gitVersion=v1.35.4" in flags
        assert f"-X {package}.gitMinor=35" in flags


def test_operator_entry_point_has_help() -> None:
    result = subprocess.run([sys.executable, "-m", "celery_operator", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--all-namespaces" in result.stdout and "--namespace" in result.stdout
