"""devcluster/promtool.py's pure parts: which release a Prometheus module tag stands for, where it is cached."""

from __future__ import annotations

import pytest

from devcluster import build, promtool

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("tag, release", [("v0.316.0", "3.16.0"), ("v0.309.2", "3.9.2"), ("v0.54.1", "2.54.1")])
def test_release_of_a_module_tag(tag: str, release: str) -> None:
    assert promtool.release_version(tag) == release


def test_cached_beside_the_control_plane_per_version(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("DEVCLUSTER_CACHE", str(tmp_path))
    assert promtool.binary() == tmp_path / f"promtool-{promtool.PROMETHEUS_MODULE_VERSION}" / "bin" / "promtool"
    assert promtool.binary().parent.parent.parent == build.cache_root()
