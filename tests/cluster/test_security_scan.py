"""checkov and kube-score over what we deploy: the chart (`helm template`, defaults and every value
set) and the children the operator builds for app/examples (tests/helpers/scan.py). Every finding
must be listed in docs/security.md with the reason it is accepted; a row no scan needs any more
must go. `make scan` prints the same findings.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import scan

pytestmark = pytest.mark.cluster  # the helm and kube-score binaries built into the cache

FIX = ("fix the manifest, or add a row to the accepted-findings table of docs/security.md with the "
       "reason it is accepted (`make scan` prints every finding)")


@pytest.fixture(scope="module")
def findings() -> list[scan.Found]:
    return scan.scan()


def test_every_finding_is_accepted_in_docs_security(findings: list[scan.Found]) -> None:
    open_findings = scan.unaccepted(findings, scan.accepted())
    assert not open_findings, f"findings not accepted ({FIX}):\n" + "\n".join(f.line() for f in open_findings)


def test_every_accepted_finding_is_still_found(findings: list[scan.Found]) -> None:
    unused = scan.stale(findings, scan.accepted())
    assert not unused, "docs/security.md accepts findings no scan reports any more (remove the rows):\n" + "\n".join(
        f"{rule.scanner} {rule.check} on {', '.join(rule.objects)}" for rule in unused)


def test_every_accepted_finding_says_why() -> None:
    rules = scan.accepted()
    assert len(rules) >= 5, "docs/security.md's table was read (else nothing is accepted and this proves little)"
    for rule in rules:
        assert rule.objects and len(rule.reason.split()) >= 6, f"{rule.scanner} {rule.check}: no objects or no reason"


def test_the_scan_covers_the_chart_and_the_example_children() -> None:
    rendered = {name: {scan.object_name(o) for o in objects} for name, objects in scan.variants().items()}
    assert {"Deployment/op-celery-operator", "ClusterRole/op-celery-operator",
            "ValidatingAdmissionPolicy/op-celery-operator-own-children-only"} <= rendered["chart-defaults"]
    assert "ServiceMonitor/celery-ops" in rendered["chart-everything"]
    assert {"Secret/shop-broker", "Deployment/shop-broker", "Deployment/shop-worker-high-priority",
            "Deployment/shop-worker-low-priority", "Deployment/shop-beat"} <= rendered["children-examples"]
    assert "Deployment/shop-flower" in rendered["children-examples-flower"]


def test_both_scanners_report_a_privileged_root_pod(tmp_path: Path) -> None:
    """The scanners run and are read: a manifest with obvious faults gets findings from each."""
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "bad", "namespace": "shop"},
           "spec": {"selector": {"matchLabels": {"app": "bad"}}, "template": {
               "metadata": {"labels": {"app": "bad"}},
               "spec": {"containers": [{"name": "bad", "image": "busybox:latest",
                                        "securityContext": {"privileged": True, "runAsUser": 0}}]}}}}
    names = scan.write_objects([bad], tmp_path / "bad")
    checkov = {f.check for f in scan.run_checkov(tmp_path / "bad", names)}
    kube_score = {f.check.split(":")[0] for f in scan.run_kube_score(tmp_path / "bad", names)}
    assert {"CKV_K8S_16", "CKV_K8S_14"} <= checkov, checkov  # privileged; image tag latest
    assert {"container-security-context-privileged", "container-image-tag"} <= kube_score, kube_score
