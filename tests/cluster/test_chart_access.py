"""Who may do what once the chart is installed, asked of a real API server.

Users: the chart's ClusterRoles aggregate into the built-in `view`, `edit` and `admin` roles, so a
ServiceAccount bound to one of those in a namespace gets our resources as Kubernetes users expect.
The operator: the chart's ValidatingAdmissionPolicy lets the operator's ServiceAccount write only
its own children, and change on a pod only what the scaler and the worker health gate write. The
operator's requests are made here through the operator's own client (celery_operator.kube.Kube)
impersonating that ServiceAccount, so RBAC grants each of them and only the policy can refuse.
A control-plane-only devcluster of this module's own: pods stay Pending, which is all a write to
a pod needs. The operator really running under the policy is tests/e2e/test_chart_rbac.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_operator import naming
from celery_operator.kube import Kube, KubeError
from celery_operator.scaler import DELETION_COST
from devcluster import build, cluster
from tests.helpers.devcluster import DevCluster
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "celery-operator"
RELEASE, RELEASE_NAMESPACE, NAMESPACE = "op", "celery-system", "shop"
OPERATOR = f"system:serviceaccount:{RELEASE_NAMESPACE}:op-celery-operator"
POLICY = "op-celery-operator-own-children-only"
OURS = {naming.LABEL_MANAGED_BY: naming.MANAGED_BY}
FIELD_MANAGER = "celery-operator"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    directory = tmp_path_factory.mktemp("access-cluster")
    cluster.up(directory, nodes=0)
    try:
        kube = DevCluster(dir=directory.resolve(), bin_dir=build.bin_dir())
        for namespace in (RELEASE_NAMESPACE, NAMESPACE):
            kube.kubectl("create", "namespace", namespace)
        kube.helm("install", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE)
        yield kube
    finally:
        cluster.down(directory)


@pytest.fixture(scope="module")
def as_operator(installed: DevCluster) -> Iterator[Kube]:
    api = installed.api_client()
    api.set_default_header("Impersonate-User", OPERATOR)
    kube = Kube(api)
    try:
        yield kube
    finally:
        kube.close()


def can_i(kube: DevCluster, user: str, verb: str, resource: str, namespace: str = NAMESPACE,
          subresource: str = "") -> bool:
    answer = kube.kubectl("auth", "can-i", verb, resource, "-n", namespace, f"--as={user}",
                          f"--subresource={subresource}", check=False)
    return answer.stdout.strip() == "yes"


def denial(write: Callable[[], Any]) -> str:
    """The policy's refusal of `write` (fails if the write went through or failed otherwise)."""
    with pytest.raises(KubeError) as refused:
        write()
    assert refused.value.status == 403 and f"ValidatingAdmissionPolicy '{POLICY}'" in str(refused.value), \
        str(refused.value)
    return str(refused.value)


def apply_as_admin(kube: DevCluster, manifest: str) -> None:
    kube.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=manifest)


def pod_manifest(name: str, labels: dict[str, str]) -> str:
    label_lines = "".join(f"\n    {key}: {value}" for key, value in labels.items())
    return (f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:{label_lines or ' {}'}\n"
            "spec:\n  containers: [{name: worker, image: sample-app}]\n")


# --- users: the built-in roles carry our resources -------------------------------------------------


@pytest.mark.parametrize("role, may_read, may_write", [
    ("view", True, False), ("edit", True, True), ("admin", True, True),
])
def test_the_builtin_roles_carry_taskqueues_and_periodicjobs(installed: DevCluster, role: str, may_read: bool,
                                                             may_write: bool) -> None:
    account = f"{role}-user"
    installed.kubectl("create", "serviceaccount", account, "-n", NAMESPACE)
    installed.kubectl("create", "rolebinding", account, "-n", NAMESPACE, f"--clusterrole={role}",
                      f"--serviceaccount={NAMESPACE}:{account}")
    user = f"system:serviceaccount:{NAMESPACE}:{account}"
    # the clusterrole-aggregation controller folds our ClusterRoles into the built-in ones
    wait_for(lambda: can_i(installed, user, "list", "taskqueues.celery-operator.dev"), 30,
             f"{role} to gain our resources")
    for resource in ("taskqueues.celery-operator.dev", "periodicjobs.celery-operator.dev"):
        for verb in ("get", "list", "watch"):
            assert can_i(installed, user, verb, resource) is may_read, (role, verb, resource)
        for verb in ("create", "update", "patch", "delete"):
            assert can_i(installed, user, verb, resource) is may_write, (role, verb, resource)
    assert can_i(installed, user, "get", "taskqueues.celery-operator.dev", subresource="status")
    assert not can_i(installed, user, "patch", "taskqueues.celery-operator.dev", subresource="status"), \
        "status is the operator's to write"
    assert not can_i(installed, user, "list", "taskqueues.celery-operator.dev", namespace="default"), \
        "a RoleBinding grants its namespace only"


def test_a_view_user_can_list_taskqueues_but_not_create_them(installed: DevCluster) -> None:
    installed.kubectl("create", "serviceaccount", "reader", "-n", NAMESPACE)
    installed.kubectl("create", "rolebinding", "reader", "-n", NAMESPACE, "--clusterrole=view",
                      f"--serviceaccount={NAMESPACE}:reader")
    reader = f"system:serviceaccount:{NAMESPACE}:reader"
    wait_for(lambda: installed.kubectl("get", "taskqueues", "-n", NAMESPACE, f"--as={reader}",
                                       check=False).returncode == 0, 30, "the view role to list TaskQueues")
    created = installed.kubectl("apply", "-n", NAMESPACE, f"--as={reader}", "-f",
                                str(ROOT / "app" / "examples" / "taskqueue.yaml"), check=False)
    assert created.returncode != 0 and "forbidden" in created.stderr.lower(), created.stdout + created.stderr


# --- the operator: its own children only ------------------------------------------------------------


def test_the_policy_is_served_and_binds_only_the_operator(installed: DevCluster) -> None:
    policy = installed.kubectl("get", "validatingadmissionpolicy", POLICY, "-o",
                               "jsonpath={.spec.matchConditions[0].expression}").stdout
    assert policy == f'request.userInfo.username == "{OPERATOR}"'
    binding = installed.kubectl("get", "validatingadmissionpolicybinding", POLICY, "-o",
                                "jsonpath={.spec.policyName} {.spec.validationActions}").stdout
    assert binding == f'{POLICY} ["Deny"]'


@pytest.mark.parametrize("kind, api_version", [("Secret", "v1"), ("Service", "v1"), ("Deployment", "apps/v1"),
                                               ("PersistentVolumeClaim", "v1")])
def test_the_operator_may_not_touch_an_object_that_is_not_its_own(installed: DevCluster, as_operator: Kube,
                                                                   kind: str, api_version: str) -> None:
    name = f"foreign-{kind.lower()}"
    manifest = foreign_manifest(kind, api_version, name)
    installed.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(manifest))
    message = denial(lambda: as_operator.apply(manifest, FIELD_MANAGER))
    assert f"{NAMESPACE}/{name} is not one of its children" in message
    denial(lambda: as_operator.apply(dict(manifest, metadata=dict(manifest["metadata"], labels=OURS)),
                                     FIELD_MANAGER))  # taking it over by labelling it
    denial(lambda: as_operator.delete(api_version, kind, NAMESPACE, name))
    assert as_operator.get(api_version, kind, NAMESPACE, name) is not None, "it is still there"


def test_the_operator_writes_and_deletes_its_own_children(as_operator: Kube) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret",
              "metadata": {"name": "shop-broker", "namespace": NAMESPACE, "labels": OURS},
              "stringData": {"url": "redis://example"}}
    as_operator.apply(secret, FIELD_MANAGER)  # create
    as_operator.apply(dict(secret, stringData={"url": "redis://changed"}), FIELD_MANAGER)  # update
    message = denial(lambda: as_operator.apply(dict(secret, metadata=dict(secret["metadata"], labels={})),
                                               FIELD_MANAGER))
    assert "may not remove that label" in message
    assert as_operator.delete("v1", "Secret", NAMESPACE, "shop-broker")
    unlabelled = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "new", "namespace": NAMESPACE}}
    denial(lambda: as_operator.apply(unlabelled, FIELD_MANAGER))


def test_the_operator_changes_only_the_deletion_cost_and_its_condition_on_its_pods(
        installed: DevCluster, as_operator: Kube) -> None:
    apply_as_admin(installed, pod_manifest("worker", OURS))
    apply_as_admin(installed, pod_manifest("someone-elses", {"app": "other"}))
    condition = {"type": naming.CONDITION_CONSUMING, "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}

    # what the scaler and the health gate write: allowed on a pod of ours
    as_operator.annotate("v1", "Pod", NAMESPACE, "worker", {DELETION_COST: "-5"})
    as_operator.annotate("v1", "Pod", NAMESPACE, "worker", {DELETION_COST: None})
    as_operator.set_pod_condition(NAMESPACE, "worker", condition)
    as_operator.set_pod_condition(NAMESPACE, "worker", dict(condition, status="False"))
    pod = json.loads(installed.kubectl("get", "pod", "worker", "-n", NAMESPACE, "-o", "json").stdout)
    assert [c["status"] for c in pod["status"]["conditions"] if c["type"] == naming.CONDITION_CONSUMING] == ["False"]

    # anything else on a pod: refused, with what the operator may do
    merge = "application/merge-patch+json"
    message = denial(lambda: as_operator._call("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/worker",
                                               body={"metadata": {"labels": {"celery-operator.dev/queue": "x"}}},
                                               content_type=merge))
    assert "may only change the controller.kubernetes.io/pod-deletion-cost annotation" in message
    denial(lambda: as_operator.annotate("v1", "Pod", NAMESPACE, "worker", {"example.com/other": "1"}))
    message = denial(lambda: as_operator.set_pod_condition(NAMESPACE, "worker", dict(condition, type="Ready")))
    assert "may only set the celery-operator.dev/consuming condition" in message
    denial(lambda: as_operator._call("PATCH", f"/api/v1/namespaces/{NAMESPACE}/pods/worker/status",
                                     body={"status": {"phase": "Failed"}}, content_type=merge))

    # a pod that is not ours: not even the deletion cost, and no delete
    denial(lambda: as_operator.annotate("v1", "Pod", NAMESPACE, "someone-elses", {DELETION_COST: "1"}))
    denial(lambda: as_operator.set_pod_condition(NAMESPACE, "someone-elses", condition))
    message = denial(lambda: as_operator.delete("v1", "Pod", NAMESPACE, "someone-elses"))
    assert f"{NAMESPACE}/someone-elses is not allowed" in message
    assert as_operator.delete("v1", "Pod", NAMESPACE, "worker"), "a worker pod of ours may be deleted"


def test_everyone_else_is_untouched_by_the_policy(installed: DevCluster) -> None:
    """The binding matches the operator's user only: the admin (and so kube-controller-manager,
    the kubelet, a user) writes unlabelled objects and edits pods as before."""
    apply_as_admin(installed, pod_manifest("plain", {}))
    installed.kubectl("label", "pod", "plain", "-n", NAMESPACE, "edited=yes")
    installed.kubectl("create", "secret", "generic", "plain", "-n", NAMESPACE, "--from-literal=a=b")
    installed.kubectl("delete", "secret", "plain", "-n", NAMESPACE)
    installed.kubectl("delete", "pod", "plain", "-n", NAMESPACE, "--wait=false")


def test_the_policy_and_the_aggregated_roles_are_values(installed: DevCluster) -> None:
    def rendered(*args: str) -> set[tuple[str, str]]:
        output = installed.helm("template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, *args).stdout
        return {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(output) if o}

    policy = {("ValidatingAdmissionPolicy", POLICY), ("ValidatingAdmissionPolicyBinding", POLICY)}
    assert policy <= rendered("--kube-version", "1.30.0")
    assert not policy & rendered("--kube-version", "1.30.0", "--set", "admissionPolicy.enabled=false")
    roles = {("ClusterRole", "op-celery-operator-view"), ("ClusterRole", "op-celery-operator-edit")}
    assert roles <= rendered()
    for off in ("rbac.aggregateToDefaultRoles=false", "rbac.create=false"):
        assert not roles & rendered("--set", off)


def foreign_manifest(kind: str, api_version: str, name: str) -> dict[str, Any]:
    metadata = {"name": name, "namespace": NAMESPACE, "labels": {"app": "someone-else"}}
    specs: dict[str, dict[str, Any]] = {
        "Secret": {"stringData": {"password": "theirs"}},
        "Service": {"spec": {"ports": [{"port": 80}], "selector": {"app": "someone-else"}}},
        "Deployment": {"spec": {"selector": {"matchLabels": {"app": "someone-else"}}, "replicas": 0, "template": {
            "metadata": {"labels": {"app": "someone-else"}},
            "spec": {"containers": [{"name": "app", "image": "sample-app"}]}}}},
        "PersistentVolumeClaim": {"spec": {"accessModes": ["ReadWriteOnce"],
                                           "resources": {"requests": {"storage": "1Gi"}}}},
    }
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **specs[kind]}


