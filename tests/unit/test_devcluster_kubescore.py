"""devcluster/kubescore.py's pure parts: where kube-score is cached, and the version it reports."""

from __future__ import annotations

import pytest

from devcluster import build, kubescore

pytestmark = pytest.mark.unit


def test_cached_beside_the_control_plane_per_version(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("DEVCLUSTER_CACHE", str(tmp_path))
    assert kubescore.binary() == tmp_path / f"kube-score-{kubescore.KUBE_SCORE_MODULE_VERSION}" / "bin" / "kube-score"
    assert kubescore.binary().parent.parent.parent == build.cache_root()


def test_the_binary_names_its_release() -> None:
    assert "-X main.version=1.20.0 " in kubescore._ldflags()
