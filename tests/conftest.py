"""Fixtures shared by every tier. The devcluster is started once per session (per parallel worker),
in a directory of its own, and stopped at the end; DEVCLUSTER_DIR reuses a cluster a developer keeps
running (`<DEVCLUSTER_DIR>-gw<n>` for parallel worker n)."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import kubernetes
import pytest

from devcluster import build, cluster
from tests.helpers import clusterdns, durations
from tests.helpers.devcluster import DevCluster


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Longest modules first (as last measured, tests/durations.json), each module's tests kept
    together and in order: parallel workers take whole modules in this order, so the run does not
    end waiting on one long module started last."""
    seconds = durations.known_order()
    position = {item.nodeid: index for index, item in enumerate(items)}
    items.sort(key=lambda item: (-seconds.get(item.nodeid.split("::")[0], 0.0), item.nodeid.split("::")[0],
                                 position[item.nodeid]))


@pytest.fixture(scope="session")
def devcluster(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> DevCluster:
    """Each parallel worker (pytest-xdist) has a cluster of its own, and with it its own operator."""
    kept = os.environ.get("DEVCLUSTER_DIR")
    if kept and worker_id != "master":
        kept = f"{kept}-{worker_id}"
    directory = Path(kept) if kept else tmp_path_factory.mktemp("devcluster")
    cluster.up(directory)
    handle = DevCluster(dir=directory.resolve(), bin_dir=build.bin_dir())
    clusterdns.use(handle)
    yield handle
    if not kept:
        cluster.down(directory)


def _namespace_name(test_name: str) -> str:
    stem = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].rstrip("-")
    return f"{stem}-{uuid.uuid4().hex[:5]}"


@pytest.fixture
def namespace(devcluster: DevCluster, request: pytest.FixtureRequest) -> str:
    """A fresh namespace for one test, deleted (without waiting) afterwards."""
    name = _namespace_name(request.node.name)
    with devcluster.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespace(kubernetes.client.V1Namespace(metadata=kubernetes.client.V1ObjectMeta(name=name)))
        yield name
        core.delete_namespace(name)
