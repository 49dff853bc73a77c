from __future__ import annotations

import pytest

from tests.helpers.devcluster import DevCluster
from tests.helpers.operator import OperatorProcess, apply_crds, start_operator


@pytest.fixture(scope="session")
def crds(devcluster: DevCluster) -> None:
    apply_crds(devcluster)


@pytest.fixture(scope="session")
def operator(devcluster: DevCluster, crds: None, tmp_path_factory: pytest.TempPathFactory) -> OperatorProcess:
    """One operator for the session, watching every namespace, resyncing every second."""
    running = start_operator(devcluster, tmp_path_factory.mktemp("operator") / "operator.log")
    yield running
    running.stop()
