"""The cluster's block in /etc/hosts: rendering, replacing, coexisting with other clusters."""

from __future__ import annotations

from pathlib import Path

import pytest

from devcluster.agent.hostsfile import (
    begin_marker,
    end_marker,
    render_block,
    replace_block,
    set_block,
)

pytestmark = pytest.mark.unit

ONE = Path("/tmp/cluster-one")
TWO = Path("/tmp/cluster-two")
BASE = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n"


def test_block_is_marked_with_the_cluster_dir() -> None:
    block = render_block(ONE, [("10.1.0.5", ["web.shop", "web.shop.svc"])])
    assert block.splitlines() == [begin_marker(ONE), "10.1.0.5\tweb.shop web.shop.svc", end_marker(ONE)]


def test_replacing_keeps_everything_else_and_other_clusters_blocks() -> None:
    with_two = replace_block(BASE, TWO, render_block(TWO, [("10.2.0.1", ["a.b"])]))
    with_both = replace_block(with_two, ONE, render_block(ONE, [("10.1.0.1", ["c.d"])]))
    updated = replace_block(with_both, ONE, render_block(ONE, [("10.1.0.2", ["e.f"])]))
    assert "10.1.0.1" not in updated and "10.1.0.2\te.f" in updated and "10.2.0.1\ta.b" in updated
    assert updated.startswith(BASE)
    assert replace_block(replace_block(updated, ONE, None), TWO, None) == BASE


def test_a_file_without_trailing_newline_gets_one_before_the_block() -> None:
    assert replace_block("127.0.0.1 localhost", ONE, "X\n") == "127.0.0.1 localhost\nX\n"


def test_set_block_writes_only_on_change(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(BASE)
    lock = tmp_path / "lock"
    assert set_block(ONE, [("10.1.0.1", ["web.shop"])], hosts, lock) is True
    assert set_block(ONE, [("10.1.0.1", ["web.shop"])], hosts, lock) is False
    assert "10.1.0.1\tweb.shop" in hosts.read_text()
    assert set_block(ONE, None, hosts, lock) is True
    assert hosts.read_text() == BASE
