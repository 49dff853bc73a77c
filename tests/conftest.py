"""Fixtures shared by every tier. The devcluster is started once per session, in a directory
of its own, and stopped at the end; DEVCLUSTER_DIR reuses a cluster a developer keeps running."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import kubernetes
import pytest

from devcluster import build, cluster
from tests.helpers import clusterdns
from tests.helpers.devcluster import DevCluster


@pytest.fixture(scope="session")
def devcluster(tmp_path_factory: pytest.TempPathFactory) -> DevCluster:
    kept = os.environ.get("DEVCLUSTER_DIR")
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
