"""The chart's Grafana dashboard and PrometheusRule: they render behind their values, the dashboard
charts only metrics the operator exports, and the alerts pass promtool's checks and unit tests.

Needs the helm binary (`make controlplane`) and promtool (`make promtool`; built here when missing).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import celery_operator.metrics  # noqa: F401  (registers the operator's series)
import pytest
import yaml
from prometheus_client import REGISTRY

from devcluster import promtool
from tests.cluster.test_chart import CHART, EVERYTHING, KUBE_VERSION, RELEASE, RELEASE_NAMESPACE, helm, kinds, only, render

pytestmark = pytest.mark.cluster

DASHBOARD = CHART / "files" / "dashboards" / "celery-operator.json"
RULES = CHART / "files" / "prometheus" / "rules.yaml"
ALERTS_TEST = Path(__file__).with_name("alerts_test.yaml")
ENABLED = ("--set", "grafana.dashboard.enabled=true", "--set", "prometheusRule.enabled=true")
ALERTS = {"CeleryQueueGrowingWithoutConsumers", "CeleryWorkersStuck", "CeleryWorkersCrashLooping",
          "CeleryBeatNotRunning", "CeleryBrokerUnavailable"}
# The metric families the dashboard shows, each in at least one panel.
CHARTED = {
    "celery_operator_queue_pending", "celery_operator_queue_in_flight", "celery_operator_queue_desired_replicas",
    "celery_operator_queue_replicas", "celery_operator_queue_consuming_workers", "celery_operator_scale_total",
    "celery_operator_worker_restarts_total", "celery_operator_stuck_workers_total", "celery_operator_broker_up",
    "celery_operator_broker_errors_total", "celery_operator_beat_up", "celery_operator_scaler_tick_seconds_bucket",
    "celery_worker_up", "celery_worker_tasks_active",
}
# PromQL words that look like metric names to the pattern below.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right",
             "Inf", "NaN", "inf", "nan"}


@pytest.fixture(scope="module")
def promtool_binary() -> Path:
    return promtool.ensure()


def run_promtool(binary: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=120, check=False)


def exported_metric_names() -> set[str]:
    """What a scrape of the operator can show, by sample name (counters end in _total, histograms
    have _bucket/_sum/_count), for the operator's own families."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("celery_"):
            names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers outside strings, label matchers,
    ranges and grouping clauses that are neither function calls nor keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for found in re.finditer(r"(?<![\w:.$])[A-Za-z_:][\w:]*", expr):
        calls = expr[found.end():].lstrip().startswith("(")
        if not calls and found.group() not in _KEYWORDS:
            names.add(found.group())
    return names


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_exprs(board: dict[str, Any]) -> dict[str, list[str]]:
    return {panel["title"]: [target["expr"] for target in panel["targets"]] for panel in board["panels"]}


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_metric_names_reads_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (le) (rate(a_bucket{x=~"$x", y="b c"}[$__rate_interval]))) / '
            'on (namespace) group_left b offset 10m > bool 3 unless c:recorded')
    assert metric_names(expr) == {"a_bucket", "b", "c:recorded"}


# --- rendering ------------------------------------------------------------------------------------


def test_neither_renders_by_default() -> None:
    assert not {"ConfigMap", "PrometheusRule"} & set(kinds(render()))


def test_dashboard_configmap_is_labelled_for_the_grafana_sidecar() -> None:
    configmap = only(render(*ENABLED), "ConfigMap")
    assert configmap["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["labels"]["app.kubernetes.io/instance"] == "op"
    [(key, text)] = configmap["data"].items()
    assert key.endswith(".json")
    assert json.loads(text) == dashboard(), "the ConfigMap carries files/dashboards/celery-operator.json"


def test_prometheusrule_spec_is_the_rules_file_promtool_checks() -> None:
    rule = only(render(*ENABLED), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert rule["spec"] == yaml.safe_load(RULES.read_text())


def test_monitoring_values_reach_the_objects() -> None:
    objects = render("-f", str(EVERYTHING))
    configmap = only(objects, "ConfigMap")
    assert configmap["metadata"]["name"] == "celery-ops-dashboard"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["labels"]["grafana.example.com/dashboard"] == "celery"
    assert "grafana_dashboard" not in configmap["metadata"]["labels"]
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "Celery"}
    rule = only(objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["metadata"]["labels"]["app.kubernetes.io/name"] == "celery-op"


@pytest.mark.parametrize("args, named", [
    (["--set", "grafana.dashboard.labelKey=has space"], "labelKey"),
    (["--set", "grafana.dashboard.namespace=Monitoring"], "namespace"),
    (["--set", "prometheusRule.lables.a=b"], "lables"),
])
def test_schema_refuses_bad_monitoring_values(args: list[str], named: str) -> None:
    result = helm("template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, *args, check=False)
    assert result.returncode != 0 and named in result.stderr, result.stderr


# --- the dashboard --------------------------------------------------------------------------------


def test_every_panel_queries_only_metrics_the_operator_exports() -> None:
    exported = exported_metric_names()
    board = dashboard()
    named: set[str] = set()
    for title, exprs in panel_exprs(board).items():
        assert exprs, f"panel {title!r} has no query"
        for expr in exprs:
            names = metric_names(expr)
            assert names, f"panel {title!r}: {expr!r} names no metric"
            assert names <= exported, f"panel {title!r} queries what the operator does not export: {names - exported}"
            named |= names
    assert CHARTED <= exported, f"the test charts metrics the operator lost: {CHARTED - exported}"
    assert CHARTED <= named, f"no panel shows {sorted(CHARTED - named)}"


def test_dashboard_filters_by_namespace_and_taskqueue() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert {"datasource", "namespace", "taskqueue"} <= set(variables)
    for name in ("namespace", "taskqueue"):
        [metric] = re.findall(r"label_values\(([\w:]+)", variables[name]["definition"])
        assert metric in exported_metric_names()
    assert len({panel["id"] for panel in board["panels"]}) == len(board["panels"])
    for title, exprs in panel_exprs(board).items():
        for expr in exprs:
            if "namespace" in expr:
                assert 'namespace=~"$namespace"' in expr and 'taskqueue=~"$taskqueue"' in expr, (title, expr)


def test_dashboard_queries_are_valid_promql(promtool_binary: Path, tmp_path: Path) -> None:
    concrete = {"$namespace": ".*", "$taskqueue": ".*", "$__rate_interval": "1m"}
    recorded = []
    for number, expr in enumerate(e for exprs in panel_exprs(dashboard()).values() for e in exprs):
        for variable, value in concrete.items():
            expr = expr.replace(variable, value)
        recorded.append({"record": f"dashboard:query_{number}", "expr": expr})
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recorded}]}))
    result = run_promtool(promtool_binary, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# --- the alerts -----------------------------------------------------------------------------------


def test_the_alerts_are_the_ones_we_ship_and_name_only_exported_metrics() -> None:
    exported = exported_metric_names()
    assert {rule["alert"] for rule in rules()} == ALERTS
    for rule in rules():
        assert metric_names(rule["expr"]) <= exported, rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        for annotation in ("summary", "description"):
            for label in ("namespace", "taskqueue"):
                assert f"$labels.{label}" in rule["annotations"][annotation], (rule["alert"], annotation)


def test_promtool_check_rules_passes(promtool_binary: Path) -> None:
    result = run_promtool(promtool_binary, "check", "rules", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout, result.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = [case for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"] for case in test["alert_rule_test"]]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert firing == ALERTS and quiet == ALERTS


def test_promtool_test_rules_passes(promtool_binary: Path) -> None:
    result = run_promtool(promtool_binary, "test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout
