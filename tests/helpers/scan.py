"""Security scans of what we deploy: the chart as `helm template` renders it, and the children the
operator builds for app/examples. Two scanners, checkov (its own venv, `make checkov`) and
kube-score (built from its Go module, devcluster/kubescore.py), each over one directory per
variant with one file per object. A finding is accepted only when docs/security.md lists it with
its reason; tests/cluster/test_security_scan.py fails on any other, `make scan` prints them all.

    python -m tests.helpers.scan     # every finding, accepted or not; exit 1 if any is not accepted
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from celery_operator import builders, reconcile
from celery_operator.models import ObjectIdentity, parse_taskqueue_spec
from celery_operator.settings import Settings
from devcluster import build, kubescore

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "celery-operator"
EVERYTHING = ROOT / "tests" / "cluster" / "values-everything.yaml"
EXAMPLES = ROOT / "app" / "examples"
ACCEPTED_DOC = ROOT / "docs" / "security.md"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"
KUBE_VERSION = "1.35.4"
RELEASE, RELEASE_NAMESPACE = "op", "celery-system"
# a stand-in for the generated passwords: only base64 of it reaches a Secret's data
PLACEHOLDER_PASSWORD = "scan-placeholder-password"

Manifest = dict[str, Any]


@dataclass(frozen=True, order=True)
class Finding:
    scanner: str  # "checkov" | "kube-score"
    check: str  # checkov: CKV_K8S_11; kube-score: "container-resources: CPU limit is not set"
    object: str  # Kind/name
    title: str = ""  # checkov's check name (kube-score's check already says it)


@dataclass(frozen=True, order=True)
class Found:
    """A finding and the renderings it appeared in (chart-defaults, children-examples, ...)."""

    finding: Finding
    variants: tuple[str, ...]

    def line(self) -> str:
        finding = self.finding
        title = f" ({finding.title})" if finding.title else ""
        return f"{finding.scanner:10s} {finding.check}{title}  {finding.object}  [{', '.join(self.variants)}]"


@dataclass(frozen=True)
class Accepted:
    scanner: str
    check: str
    objects: tuple[str, ...]  # Kind/name patterns (fnmatch)
    reason: str

    def covers(self, finding: Finding) -> bool:
        return (finding.scanner, finding.check) == (self.scanner, self.check) and any(
            fnmatch.fnmatchcase(finding.object, pattern) for pattern in self.objects)


# --- what is scanned ---------------------------------------------------------------------------


def helm_template(*args: str) -> list[Manifest]:
    output = subprocess.run([str(build.bin_dir() / "helm"), "template", RELEASE, str(CHART), "--namespace",
                             RELEASE_NAMESPACE, "--kube-version", KUBE_VERSION, *args],
                            check=True, capture_output=True, text=True, timeout=120).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def operator_settings(chart: list[Manifest]) -> Settings:
    """The settings the chart's operator Deployment runs with (its env), as the operator reads them."""
    [deployment] = [o for o in chart if o["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    environ = {}
    for variable in container.get("env", []):
        field_path = variable.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if "value" in variable:
            environ[variable["name"]] = variable["value"]
        elif field_path == "metadata.namespace":
            environ[variable["name"]] = deployment["metadata"]["namespace"]
        elif field_path == "metadata.name":
            environ[variable["name"]] = deployment["metadata"]["name"] + "-pod"
    return Settings.from_environment(environ)


def example_taskqueue() -> Manifest:
    return yaml.safe_load((EXAMPLES / "taskqueue.yaml").read_text())


def children(taskqueue: Manifest, settings: Settings, namespace: str = "shop") -> list[Manifest]:
    """What the operator applies for `taskqueue` (with a beat: app/examples' PeriodicJob refers to it),
    from the pure builders as the reconciler calls them."""
    spec = parse_taskqueue_spec(taskqueue["spec"])
    owner = ObjectIdentity(name=taskqueue["metadata"]["name"], namespace=namespace,
                           uid="00000000-0000-4000-8000-000000000000", generation=1)
    images = builders.DefaultImages(beat=settings.beat_image, redis=settings.redis_image,
                                    flower=settings.flower_image)
    return builders.desired_children(
        owner, spec, images=images, broker_password=PLACEHOLDER_PASSWORD,
        beat=builders.BeatOptions(custom=False, state="broker"),
        flower_password=PLACEHOLDER_PASSWORD if spec.flower.generated_password else None,
        operator_source=reconcile.operator_source(settings))


def variants() -> dict[str, list[Manifest]]:
    """Every rendering scanned: the chart with its defaults and with every value set (and every
    feature on), and the example's children as the default chart's operator builds them, without
    and with Flower."""
    chart = helm_template()
    settings = operator_settings(chart)
    with_flower = example_taskqueue()
    with_flower["spec"]["flower"] = {"enabled": True}
    return {
        "chart-defaults": chart,
        "chart-everything": helm_template("-f", str(EVERYTHING)),
        "children-examples": children(example_taskqueue(), settings),
        "children-examples-flower": children(with_flower, settings),
    }


def object_name(manifest: Manifest) -> str:
    return f"{manifest['kind']}/{manifest['metadata']['name']}"


def write_objects(objects: Iterable[Manifest], directory: Path) -> dict[str, str]:
    """One file per object (so each finding names its object); file name -> Kind/name."""
    directory.mkdir(parents=True)
    names = {}
    for index, manifest in enumerate(objects):
        file = f"{index:02d}-{re.sub(r'[^A-Za-z0-9.-]', '-', object_name(manifest))}.yaml"
        (directory / file).write_text(yaml.safe_dump(manifest, sort_keys=False))
        names[file] = object_name(manifest)
    return names


# --- the scanners ------------------------------------------------------------------------------


def run_kube_score(directory: Path, names: dict[str, str]) -> list[Finding]:
    files = [str(directory / file) for file in sorted(names)]
    kubernetes = "v" + ".".join(KUBE_VERSION.split(".")[:2])
    result = subprocess.run([str(kubescore.ensure()), "score", "--kubernetes-version", kubernetes,
                             "--output-format", "json", *files], capture_output=True, text=True, timeout=300)
    if result.returncode not in (0, 1):  # 1: it found something
        raise RuntimeError(f"kube-score failed ({result.returncode}): {result.stderr}")
    findings = []
    for scored in json.loads(result.stdout):
        target = names[Path(scored["file_name"]).name]
        for check in scored["checks"]:
            if check["skipped"] or check["grade"] >= 10:  # 10 = OK; 1 critical, 5 warning
                continue
            for comment in check.get("comments") or [{"summary": ""}]:
                findings.append(Finding("kube-score", f"{check['check']['id']}: {comment['summary']}", target))
    return findings


def run_checkov(directory: Path, names: dict[str, str]) -> list[Finding]:
    if not CHECKOV.exists():
        raise RuntimeError(f"{CHECKOV} is missing: `make checkov` installs it (its own venv)")
    # --skip-download: no request to the vendor's platform (nothing leaves this machine)
    result = subprocess.run([str(CHECKOV), "--directory", str(directory), "--framework", "kubernetes",
                             "--output", "json", "--quiet", "--compact", "--skip-download"],
                            capture_output=True, text=True, timeout=600, cwd=directory)
    if result.returncode not in (0, 1):
        raise RuntimeError(f"checkov failed ({result.returncode}): {result.stderr[-3000:]}")
    reports = json.loads(result.stdout)
    findings = []
    for report in reports if isinstance(reports, list) else [reports]:
        for failed in report.get("results", {}).get("failed_checks", []):
            target = names[Path(failed["file_path"]).name]
            findings.append(Finding("checkov", failed["check_id"], target, failed["check_name"]))
    return findings


def scan() -> list[Found]:
    seen: dict[Finding, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="security-scan-") as temporary:
        for variant, objects in variants().items():
            directory = Path(temporary) / variant
            names = write_objects(objects, directory)
            for finding in {*run_kube_score(directory, names), *run_checkov(directory, names)}:
                seen.setdefault(finding, []).append(variant)
    return sorted(Found(finding, tuple(where)) for finding, where in seen.items())


# --- what is accepted ---------------------------------------------------------------------------


def accepted(document: Path = ACCEPTED_DOC) -> list[Accepted]:
    """The rows of docs/security.md's accepted-findings table:
    | scanner | `check` | `Kind/name`, ... | reason |"""
    rows = []
    for line in document.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] not in ("checkov", "kube-score"):
            continue
        scanner, check, objects, reason = cells
        patterns = tuple(p.strip().strip("`") for p in objects.split(",") if p.strip())
        rows.append(Accepted(scanner, check.strip("`"), patterns, reason))
    return rows


def unaccepted(findings: Iterable[Found], rules: Iterable[Accepted]) -> list[Found]:
    rules = list(rules)
    return [found for found in findings if not any(rule.covers(found.finding) for rule in rules)]


def stale(findings: Iterable[Found], rules: Iterable[Accepted]) -> list[Accepted]:
    """Accepted rows no finding needs any more (fixed: the row goes)."""
    findings = list(findings)
    return [rule for rule in rules if not any(rule.covers(found.finding) for found in findings)]


def main() -> int:
    findings = scan()
    rules = accepted()
    open_findings = set(unaccepted(findings, rules))
    for found in findings:
        print(("NOT ACCEPTED " if found in open_findings else "accepted     ") + found.line())
    unused = stale(findings, rules)
    for rule in unused:
        print(f"stale        docs/security.md accepts {rule.scanner} {rule.check} on {', '.join(rule.objects)}, "
              "which no scan finds any more")
    print(f"{len(findings)} findings, {len(open_findings)} not accepted (docs/security.md), {len(unused)} stale")
    return 1 if open_findings else 0


if __name__ == "__main__":
    sys.exit(main())
