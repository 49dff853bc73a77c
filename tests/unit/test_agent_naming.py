"""Small pure helpers: pod hostnames, the hostname wrapper, log tails, pod directories."""

from __future__ import annotations

from pathlib import Path

import pytest

from devcluster.agent import procs
from devcluster.agent.kubelet_api import last_lines
from devcluster.agent.logs import pod_directory

pytestmark = pytest.mark.unit


def test_pod_hostname_is_the_pod_name_cut_to_63_characters() -> None:
    assert procs.pod_hostname("web-1") == "web-1"
    assert procs.pod_hostname("web-1", "custom") == "custom"
    long_name = "a" * 62 + "-b" + "c" * 10
    assert procs.pod_hostname(long_name) == "a" * 62  # cut, and no trailing '-'


def test_the_hostname_wrapper_execs_the_command_with_its_own_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(procs, "_UTS_USABLE", True)
    wrapped = procs.with_hostname(["celery", "-A", "x", "--hostname", "q@%h"], "web-1")
    assert wrapped[:5] == ["unshare", "--uts", "--", "sh", "-c"]
    assert wrapped[5] == 'hostname "$0" && exec "$@"'
    assert wrapped[6:] == ["web-1", "celery", "-A", "x", "--hostname", "q@%h"]
    monkeypatch.setattr(procs, "_UTS_USABLE", False)
    assert procs.with_hostname(["true"], "web-1") == ["true"]


def test_last_lines() -> None:
    data = b"one\ntwo\nthree\n"
    assert last_lines(data, -1) == data
    assert last_lines(data, 0) == b""
    assert last_lines(data, 2) == b"two\nthree\n"
    assert last_lines(b"no newline", 1) == b"no newline"


def test_pod_directory_defaults_to_the_default_namespace() -> None:
    assert pod_directory(Path("/c"), "shop/web-1") == Path("/c/pods/shop_web-1")
    assert pod_directory(Path("/c"), "web-1") == Path("/c/pods/default_web-1")


def test_pod_directories_of_very_long_names_stay_valid_file_names() -> None:
    from devcluster.agent.layout import pod_dir_name

    assert pod_dir_name("shop", "web-1") == "shop_web-1"
    long_one, other = pod_dir_name("ns", "a" * 253), pod_dir_name("ns", "a" * 252 + "b")
    assert len(long_one) <= 240 and long_one != other
