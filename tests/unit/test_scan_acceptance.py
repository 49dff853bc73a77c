"""tests/helpers/scan.py's reading of docs/security.md: which findings a row accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.scan import Accepted, Finding, Found, accepted, stale, unaccepted

pytestmark = pytest.mark.unit

TABLE = """
Some prose | with a pipe.

| scanner | finding | objects | why it is accepted |
|---|---|---|---|
| checkov | `CKV_K8S_11` | `Deployment/shop-worker-*`, `Deployment/op-celery-operator` | no CPU limit: throttling slows tasks |
| kube-score | `container-resources: CPU limit is not set` | `Deployment/op-celery-operator` | the same reason as above |
"""


def found(scanner: str, check: str, target: str) -> Found:
    return Found(Finding(scanner, check, target), ("chart-defaults",))


def test_rows_of_the_table_are_read(tmp_path: Path) -> None:
    document = tmp_path / "security.md"
    document.write_text(TABLE)
    assert accepted(document) == [
        Accepted("checkov", "CKV_K8S_11", ("Deployment/shop-worker-*", "Deployment/op-celery-operator"),
                 "no CPU limit: throttling slows tasks"),
        Accepted("kube-score", "container-resources: CPU limit is not set", ("Deployment/op-celery-operator",),
                 "the same reason as above"),
    ]


def test_a_row_accepts_its_check_on_its_objects_only(tmp_path: Path) -> None:
    document = tmp_path / "security.md"
    document.write_text(TABLE)
    rules = accepted(document)
    worker = found("checkov", "CKV_K8S_11", "Deployment/shop-worker-high-priority")
    flower = found("checkov", "CKV_K8S_11", "Deployment/shop-flower")
    other_check = found("checkov", "CKV_K8S_13", "Deployment/shop-worker-high-priority")
    other_scanner = found("kube-score", "CKV_K8S_11", "Deployment/op-celery-operator")
    assert unaccepted([worker, flower, other_check, other_scanner], rules) == [flower, other_check, other_scanner]
    assert stale([worker], rules) == [rules[1]]
