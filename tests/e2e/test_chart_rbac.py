"""The operator as the chart deploys it, under the chart's RBAC, proven on a real API server.

Each test gets a devcluster of its own: `helm install` creates the operator Deployment, whose pod
runs the operator image (built here from operator/Dockerfile) on a real node with a projected
token of the chart's ServiceAccount, so every request the operator makes is authorized by the
chart's (Cluster)Roles. The API server's audit log (DIR/logs/audit.log) records each of those
requests with its verb, resource, namespace and response code: a 403 there is a rule missing from
the chart. The session's operator never sees these clusters, so no two operators fight.
"""

from __future__ import annotations

import base64
import collections
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celery
import kubernetes
import pytest
import redis

from celery_operator.kube import Kube, KubeError
from devcluster import images
from tests.helpers.devcluster import DevCluster, own_cluster
from tests.helpers.taskqueues import TaskQueues
from tests.helpers.waiting import ConditionNotMet, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "celery-operator"
EXAMPLE = ROOT / "app" / "examples" / "taskqueue.yaml"
RELEASE, RELEASE_NAMESPACE = "op", "celery-system"
SERVICE_ACCOUNT = f"system:serviceaccount:{RELEASE_NAMESPACE}:op-celery-operator"
READY_TIMEOUT = 180  # a managed Redis and a real Celery worker start as pods on a busy 2-core machine


@dataclass(frozen=True)
class Request:
    verb: str
    resource: str  # "deployments/scale", "/apis" for non-resource URLs
    namespace: str | None
    code: int
    message: str


@pytest.fixture
def chart_cluster(tmp_path: Path) -> Iterator[DevCluster]:
    with own_cluster(tmp_path / "cluster") as handle:  # the Secret's broker URL names its Services
        yield handle


def operator_requests(devcluster: DevCluster) -> list[Request]:
    """Every request the chart's ServiceAccount made, from the audit log."""
    found = []
    with (devcluster.dir / "logs" / "audit.log").open() as log:
        for line in log:
            entry = json.loads(line)
            if entry["user"]["username"] != SERVICE_ACCOUNT:
                continue
            ref = entry.get("objectRef") or {}
            resource = ref.get("resource")
            if resource is None:
                resource = entry["requestURI"].split("?")[0]
            elif ref.get("subresource"):
                resource = f"{resource}/{ref['subresource']}"
            if ref.get("apiGroup"):
                resource = f"{resource}.{ref['apiGroup']}"
            status = entry.get("responseStatus") or {}
            found.append(Request(entry["verb"], resource, ref.get("namespace"), status.get("code", 0),
                                 status.get("message", "")))
    return found


def summary(requests: list[Request]) -> str:
    counts = collections.Counter((r.verb, r.resource, r.namespace or "-", r.code) for r in requests)
    return "\n".join(f"{n:5d} {verb:6s} {resource} ns={ns} -> {code}" for (verb, resource, ns, code), n in
                     sorted(counts.items()))


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def operator_log(devcluster: DevCluster) -> str:
    return devcluster.kubectl("logs", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=operator",
                              "--tail=-1", "--prefix", check=False).stdout


def install_chart(devcluster: DevCluster, *values: str) -> None:
    devcluster.kubectl("create", "namespace", RELEASE_NAMESPACE)
    # --wait: the Deployment's pod is Ready, i.e. the readiness probe reached the operator's /healthz.
    # The images are the ones built here (nothing is pulled); otherwise the chart's defaults.
    # The tests send tasks and read queues from the host: the brokers' NetworkPolicies let the node network in.
    devcluster.helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout", "120s",
                    "--set", "config.resyncSeconds=2", "--set", f"config.sourceCidrs={devcluster.node_network}",
                    *images.operator_chart_values(), *values, timeout=180)


def ready_pods(tqs: TaskQueues, selector: str) -> list[Any]:
    pods = tqs.core.list_namespaced_pod(tqs.namespace, label_selector=selector).items
    return [pod for pod in pods if pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])]


def diagnostics(devcluster: DevCluster, tqs: TaskQueues, name: str) -> str:
    """What a failed wait leaves behind: the TaskQueue's status, the pods, the operator's log."""
    pods = devcluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
    try:
        status = json.dumps(tqs.get(name).get("status"), indent=1)
    except Exception as error:  # noqa: BLE001 - diagnostics only
        status = repr(error)
    return (f"TaskQueue {tqs.namespace}/{name} status: {status}\npods:\n{pods}\n"
            f"operator log (tail):\n{operator_log(devcluster)[-4000:]}")


def wait_ready_unless_denied(devcluster: DevCluster, tqs: TaskQueues, name: str,
                             tolerated: frozenset[str] = frozenset()) -> None:
    """Wait for Ready=True on the TaskQueue, failing at once (not at the deadline) on a 403 for a
    resource not in `tolerated`."""

    def ready_or_denied() -> tuple[str, Any] | None:
        denied = [r for r in operator_requests(devcluster) if r.code == 403 and r.resource not in tolerated]
        if denied:
            return "denied", denied
        body = tqs.get(name)
        for condition in body.get("status", {}).get("conditions", []):
            if (condition["type"], condition["status"]) == ("Ready", "True") and \
                    condition.get("observedGeneration") == body["metadata"]["generation"]:
                return "ready", condition
        return None

    try:
        outcome, detail = wait_for(ready_or_denied, READY_TIMEOUT,
                                   f"Ready=True on TaskQueue {tqs.namespace}/{name}", interval=0.5)
    except ConditionNotMet as timeout:
        raise AssertionError(f"{timeout}\n{diagnostics(devcluster, tqs, name)}") from None
    assert outcome == "ready", "the chart's RBAC denied:\n" + summary(detail) + "\n" + detail[0].message


def assert_no_denials(devcluster: DevCluster) -> list[Request]:
    requests = operator_requests(devcluster)
    print(f"requests of {SERVICE_ACCOUNT}:\n{summary(requests)}")
    assert len(requests) > 20, "the audit log holds the operator's requests (else this proves nothing)"
    denied = [r for r in requests if r.code == 403]
    assert not denied, "the chart's RBAC denied:\n" + summary(denied) + "\n" + denied[0].message
    assert "Not enough permissions" not in operator_log(devcluster)
    return requests


def assert_the_policy_confines_the_operator(devcluster: DevCluster, tqs: TaskQueues, worker_pod: str) -> None:
    """The chart's admission policy (on by default): the operator's ServiceAccount, which RBAC lets
    write any Deployment or Secret, is refused one that is not its own, and a label edit of its own
    worker pod. Requests made through the operator's client impersonating that ServiceAccount (the
    audit log files them under the impersonating admin, so assert_no_denials does not count them)."""
    policy = "op-celery-operator-own-children-only"
    assert devcluster.kubectl("get", "validatingadmissionpolicybinding", policy, "-o", "name").stdout.strip()
    devcluster.kubectl("create", "deployment", "theirs", "-n", tqs.namespace, "--image=sample-app", "--replicas=0")
    devcluster.kubectl("create", "secret", "generic", "theirs", "-n", tqs.namespace, "--from-literal=token=x")
    api = devcluster.api_client()
    api.set_default_header("Impersonate-User", SERVICE_ACCOUNT)
    kube = Kube(api)
    writes = {
        "apply to a Deployment not ours": lambda: kube.apply(
            {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "theirs", "namespace": tqs.namespace},
             "spec": {"replicas": 3}}, "celery-operator"),
        "delete a Secret not ours": lambda: kube.delete("v1", "Secret", tqs.namespace, "theirs"),
        "label our worker pod": lambda: kube._call(
            "PATCH", f"/api/v1/namespaces/{tqs.namespace}/pods/{worker_pod}",
            body={"metadata": {"labels": {"celery-operator.dev/queue": "elsewhere"}}},
            content_type="application/merge-patch+json"),
    }
    try:
        for what, write in writes.items():
            with pytest.raises(KubeError) as refused:
                write()
            assert refused.value.status == 403 and f"ValidatingAdmissionPolicy '{policy}'" in str(refused.value), \
                f"{what}: {refused.value}"
    finally:
        kube.close()
    assert tqs.core.read_namespaced_secret("theirs", tqs.namespace)
    assert tqs.apps.read_namespaced_deployment("theirs", tqs.namespace).spec.replicas == 0


def test_cluster_wide_chart_runs_the_example_without_a_denied_request(chart_cluster: DevCluster) -> None:
    install_chart(chart_cluster)
    chart_cluster.kubectl("create", "namespace", "shop")
    chart_cluster.kubectl("apply", "-n", "shop", "-f", str(EXAMPLE))
    tqs = TaskQueues(chart_cluster, "shop")
    try:
        wait_ready_unless_denied(chart_cluster, tqs, "shop")
        assert wait_for(lambda: ready_pods(tqs, "app.kubernetes.io/instance=shop,app.kubernetes.io/component=broker"),
                        60, "the managed Redis pod")
        [worker] = wait_for(lambda: ready_pods(tqs, "celery-operator.dev/queue=low-priority"), 60,
                            "the low_priority worker pod")
        assert worker.spec.containers[0].command[:4] == ["celery", "-A", "myproject", "worker"]

        # the worker is a real Celery worker of the sample app, reached through the Secret's broker URL
        secret = tqs.core.read_namespaced_secret("shop-broker", "shop")
        url = base64.b64decode(secret.data["url"]).decode()
        celery.Celery(broker=url).send_task("myapp.tasks.record", args=["chart-runs", "hello"], queue="low_priority")
        try:
            [entry] = wait_for(lambda: redis.Redis.from_url(url).lrange("chart-runs", 0, -1), READY_TIMEOUT,
                               "the worker to run the task")
        except ConditionNotMet as timeout:
            worker_log = chart_cluster.kubectl("logs", "-n", "shop", worker.metadata.name, "--tail=200",
                                               check=False)
            waiting = redis.Redis.from_url(url).llen("low_priority")
            raise AssertionError(f"{timeout}\nlow_priority holds {waiting} messages\nworker log:\n"
                                 f"{worker_log.stdout}{worker_log.stderr}\n"
                                 f"{diagnostics(chart_cluster, tqs, 'shop')}") from None
        # that worker, or its replacement if the operator found it stuck (a hang seen here at start)
        assert json.loads(entry)["hostname"].startswith("low_priority@shop-worker-low-priority-")
        assert_the_policy_confines_the_operator(chart_cluster, tqs, worker.metadata.name)

        # the operator pods (two: the Lease's holder acts, tests/e2e/test_operator_ha.py) run the
        # operator image, as its image's non-root user, with a projected token
        operator_pods = tqs.core.list_namespaced_pod(
            RELEASE_NAMESPACE, label_selector="app.kubernetes.io/component=operator").items
        assert len(operator_pods) == 2
        lease = kubernetes.client.CoordinationV1Api(tqs.api_client).read_namespaced_lease(
            "op-celery-operator", RELEASE_NAMESPACE)
        [operator_pod] = [p for p in operator_pods if p.metadata.name == lease.spec.holder_identity]
        assert operator_pod.spec.containers[0].image == images.build_images(["operator"])["operator"].reference
        assert operator_pod.status.container_statuses[0].image_id
        assert any(v.projected and any(s.service_account_token for s in v.projected.sources)
                   for v in operator_pod.spec.volumes)
        assert operator_pod.spec.service_account_name == "op-celery-operator"

        # the chart's metrics Service selects the operator pod and reaches its /metrics
        operator_ip = wait_for(lambda: [p.status.pod_ip for p in tqs.core.list_namespaced_pod(
            RELEASE_NAMESPACE, label_selector="app.kubernetes.io/component=operator").items if p.status.pod_ip],
            30, "the operator pod's IP")[0]
        slices = json.loads(chart_cluster.kubectl("get", "endpointslices", "-n", RELEASE_NAMESPACE, "-l",
                                                  "kubernetes.io/service-name=op-celery-operator-metrics",
                                                  "-o", "json").stdout)["items"]
        assert operator_ip in {a for s in slices for e in s.get("endpoints") or [] for a in e["addresses"]}
        metrics = wait_for(lambda: fetch(f"http://op-celery-operator-metrics.{RELEASE_NAMESPACE}.svc:8000/metrics"),
                           30, "the operator's metrics through its Service")
        assert "celery_operator_queue_pending" in metrics

        # a queue removed from the spec: its worker Deployment is deleted, under the chart's RBAC too
        chart_cluster.kubectl("patch", "tq", "shop", "-n", "shop", "--type=json", "-p",
                              '[{"op": "remove", "path": "/spec/queues/0"}]')
        wait_for(lambda: tqs.deployment("shop-worker-high-priority") is None, 60,
                 "the removed queue's worker Deployment to be deleted")

    finally:
        tqs.close()

    requests = assert_no_denials(chart_cluster)
    used = {(r.verb, r.resource) for r in requests}
    # what the reconcile of the example needed, each one granted: creation by server-side apply
    # (authorized as patch and create), the scale subresource, status, events, kopf's watches
    for expected in (("patch", "secrets"), ("patch", "deployments.apps"), ("patch", "deployments/scale.apps"),
                     ("delete", "deployments.apps"),
                     ("patch", "taskqueues/status.celery-operator.dev"), ("create", "events"),
                     ("watch", "taskqueues.celery-operator.dev"),
                     ("watch", "customresourcedefinitions.apiextensions.k8s.io")):
        assert expected in used, f"{expected} was not observed:\n{summary(requests)}"
    cluster_wide = {r.resource for r in requests if r.namespace is None and not r.resource.startswith("/")}
    assert "namespaces" not in cluster_wide, "with --all-namespaces kopf does not look at namespaces"


def test_namespaced_chart_reconciles_its_namespace_and_never_touches_another(chart_cluster: DevCluster) -> None:
    for name in ("team-a", "team-b"):
        chart_cluster.kubectl("create", "namespace", name)
    install_chart(chart_cluster, "--set", "watchNamespaces={team-a}")
    # team-b's TaskQueue first: by the time team-a's is reconciled, a watch on team-b would have
    # delivered team-b's long before
    chart_cluster.kubectl("apply", "-n", "team-b", "-f", str(EXAMPLE))
    chart_cluster.kubectl("apply", "-n", "team-a", "-f", str(EXAMPLE))
    team_a, team_b = TaskQueues(chart_cluster, "team-a"), TaskQueues(chart_cluster, "team-b")
    try:
        wait_ready_unless_denied(chart_cluster, team_a, "shop")
        wait_for(lambda: ready_pods(team_a, "celery-operator.dev/queue=low-priority"), 60, "team-a's worker pod")
        untouched = team_b.get("shop")
        assert "status" not in untouched
        assert not [key for key in untouched["metadata"].get("annotations", {}) if key.startswith(
            "celery-operator.dev/")], "kopf left no bookkeeping on team-b's TaskQueue"
        assert not team_b.apps.list_namespaced_deployment("team-b").items
        assert not team_b.core.list_namespaced_secret(
            "team-b", label_selector="app.kubernetes.io/managed-by=celery-operator").items
    finally:
        team_a.close()
        team_b.close()

    requests = assert_no_denials(chart_cluster)
    assert not [r for r in requests if r.namespace == "team-b"], "the operator never even asked about team-b"
    namespaces = {r.namespace for r in requests}
    assert namespaces == {"team-a", RELEASE_NAMESPACE, None}, namespaces
    assert {r.resource for r in requests if r.namespace == RELEASE_NAMESPACE} == {
        "leases.coordination.k8s.io"}, "in its own namespace, the operator touches only its Lease"
    cluster_wide = {(r.verb, r.resource) for r in requests if r.namespace is None and not r.resource.startswith("/")}
    # kopf's cluster-scoped reads in this mode: namespace names (to match --namespace) and CRDs
    assert cluster_wide <= {("list", "namespaces"), ("watch", "namespaces"),
                            ("list", "customresourcedefinitions.apiextensions.k8s.io"),
                            ("watch", "customresourcedefinitions.apiextensions.k8s.io")}, cluster_wide
    assert ("watch", "namespaces") in cluster_wide


def test_crds_applied_after_the_operator_started_are_picked_up(chart_cluster: DevCluster) -> None:
    """crds.install=false, the CRDs applied by someone else later: kopf's watch on CRDs (the
    chart's customresourcedefinitions list/watch rule) notices them without an operator restart."""
    install_chart(chart_cluster, "--set", "crds.install=false")
    assert "taskqueues" not in chart_cluster.kubectl("api-resources", "--api-group=celery-operator.dev").stdout
    chart_cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    chart_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    chart_cluster.kubectl("create", "namespace", "shop")
    chart_cluster.kubectl("apply", "-n", "shop", "-f", str(EXAMPLE))
    tqs = TaskQueues(chart_cluster, "shop")
    try:
        wait_ready_unless_denied(chart_cluster, tqs, "shop")
    finally:
        tqs.close()
    assert_no_denials(chart_cluster)
    restarts = json.loads(chart_cluster.kubectl("get", "pods", "-n", RELEASE_NAMESPACE, "-o", "json").stdout)
    assert [s["restartCount"] for p in restarts["items"] for s in p["status"]["containerStatuses"]] == [0, 0]


def test_crds_are_picked_up_even_when_the_operator_may_not_watch_them(chart_cluster: DevCluster) -> None:
    """Without the customresourcedefinitions rule kopf cannot hear of new CRDs at all, so only the
    operator's own rescans of API discovery can find them: the same path that covers a CRD whose
    last event comes before discovery lists it."""
    install_chart(chart_cluster, "--set", "crds.install=false")
    role = json.loads(chart_cluster.kubectl("get", "clusterrole", "op-celery-operator", "-o", "json").stdout)
    [index] = [i for i, rule in enumerate(role["rules"]) if "customresourcedefinitions" in rule["resources"]]
    chart_cluster.kubectl("patch", "clusterrole", "op-celery-operator", "--type=json", "-p",
                          json.dumps([{"op": "remove", "path": f"/rules/{index}"}]))
    chart_cluster.kubectl("delete", "pods", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=operator")
    chart_cluster.kubectl("rollout", "status", "deployment/op-celery-operator", "-n", RELEASE_NAMESPACE,
                          "--timeout=120s")
    crds = "customresourcedefinitions.apiextensions.k8s.io"
    wait_for(lambda: [r for r in operator_requests(chart_cluster) if r.resource == crds and r.code == 403], 60,
             "the new operator pod to be denied the CRD watch")
    chart_cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    chart_cluster.kubectl("create", "namespace", "shop")
    chart_cluster.kubectl("apply", "-n", "shop", "-f", str(EXAMPLE))
    tqs = TaskQueues(chart_cluster, "shop")
    try:
        wait_ready_unless_denied(chart_cluster, tqs, "shop", tolerated=frozenset({crds}))
    finally:
        tqs.close()
    assert "Serving periodicjobs, taskqueues." in operator_log(chart_cluster)
