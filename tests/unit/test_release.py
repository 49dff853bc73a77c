"""The release discipline (CHANGELOG.md): the package, the operator image and the chart carry one
version, and the CHANGELOG lists exactly the children an upgrade from the previous release rewrites
or rolls, as the builders make them for the same specs (tests/release/)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

import celery_operator
from celery_operator.settings import Settings
from devcluster import images
from tests.release import compare, manifests

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
CHANGELOG = (ROOT / "CHANGELOG.md").read_text()
PREVIOUS = json.loads((ROOT / "tests" / "release" / "previous.json").read_text())
ENTRY = re.compile(r"^- (?P<child>[\w-]+ \w+) — (?P<change>rolls|rewritten|new|removed)\b", re.MULTILINE)


def releases() -> list[str]:
    return re.findall(r"^## (\d+\.\d+\.\d+)", CHANGELOG, re.MULTILINE)


def section(version: str) -> str:
    start = CHANGELOG.index(f"## {version}")
    following = CHANGELOG.find("\n## ", start + 1)
    return CHANGELOG[start:following if following != -1 else None]


def test_the_package_the_operator_image_and_the_chart_carry_one_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((ROOT / "charts" / "celery-operator" / "Chart.yaml").read_text())
    assert celery_operator.__version__ == version
    assert (chart["version"], chart["appVersion"]) == (version, version)
    assert images.recipes()["operator"].reference.endswith(f":{version}")
    assert Settings().beat_image.endswith(f":{version}"), "the beat runs the operator's image"
    assert releases()[0] == version, "the CHANGELOG's newest entry is this version"


def test_the_changelog_lists_what_an_upgrade_from_the_previous_release_rewrites_and_rolls() -> None:
    current, previous = releases()[0], PREVIOUS["version"]
    assert releases()[1] == previous, "tests/release/previous.json is the release before this one"
    entry = section(current)
    assert f"What an upgrade from {previous} does to running TaskQueues" in entry
    listed = {match["child"]: match["change"] for match in ENTRY.finditer(entry)}
    found = compare.changes(PREVIOUS["taskqueues"], manifests.every_manifest())
    assert listed == found, (f"CHANGELOG.md {current} lists {listed}; the builders change {found} "
                             "for the same specs: say what the upgrade does, and why")


def test_a_change_to_a_childs_pod_template_counts_as_a_roll_and_to_its_metadata_as_a_rewrite() -> None:
    worker = PREVIOUS["taskqueues"]["example"]["Deployment/example-worker-low-priority"]
    relabelled = json.loads(json.dumps(worker))
    relabelled["metadata"]["labels"]["team"] = "blue"
    relabelled["metadata"]["annotations"]["celery-operator.dev/applied-hash"] = "other"
    assert compare.changes({"t": {"w": worker}}, {"t": {"w": relabelled}}) == {"worker Deployment": "rewritten"}
    rolled = json.loads(json.dumps(relabelled))
    rolled["spec"]["template"]["spec"]["containers"][0]["image"] = "acme/shop:2"
    assert compare.changes({"t": {"w": worker}}, {"t": {"w": rolled}}) == {"worker Deployment": "rolls"}
    assert compare.changes({"t": {"w": worker}}, {"t": {"w": worker}}) == {}
