"""Bad TaskQueues and PeriodicJobs are refused by the API server at `kubectl apply`, with a message
naming the field; good ones (the examples) are accepted; `kubectl explain` reads well."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from tests.helpers.devcluster import DevCluster
from tests.helpers.operator import apply_crds

pytestmark = pytest.mark.cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "app" / "examples"


@pytest.fixture(scope="module", autouse=True)
def crds(devcluster: DevCluster) -> None:
    apply_crds(devcluster)


def _taskqueue() -> dict[str, Any]:
    return {"apiVersion": "celery-operator.dev/v1alpha1", "kind": "TaskQueue", "metadata": {"name": "shop"},
            "spec": {"image": "example.invalid/app:1", "app": "myproject",
                     "queues": [{"name": "jobs", "autoscaling": {"maxReplicas": 3}}]}}


def _periodicjob() -> dict[str, Any]:
    return {"apiVersion": "celery-operator.dev/v1alpha1", "kind": "PeriodicJob", "metadata": {"name": "nightly"},
            "spec": {"taskQueueRef": {"name": "shop"}, "task": "myapp.tasks.daily_cleanup", "schedule": "0 3 * * *"}}


def _edit(base: Callable[[], dict[str, Any]], change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    body = copy.deepcopy(base())
    change(body)
    return body


def _spec(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda body: body["spec"].update(values)


def _without(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda body: body["spec"].pop(key)


_OAUTH = {"provider": "github", "allowedEmails": ".*@acme\\.com", "clientId": "Iv1.abc",
          "clientSecretRef": {"name": "gh", "key": "secret"}, "redirectUri": "https://flower.acme.com/login"}

BAD_TASKQUEUES = {
    "name over 40 characters": (lambda b: b["metadata"].update(name="x" * 41), "metadata.name"),
    "missing image": (_without("image"), "spec.image"),
    "missing app": (_without("app"), "spec.app"),
    "missing queues": (_without("queues"), "spec.queues"),
    "no queues": (_spec(queues=[]), "spec.queues"),
    "duplicate queue names": (_spec(queues=[{"name": "a"}, {"name": "a"}]), "spec.queues[1]"),
    "queue names colliding once DNS-safe": (_spec(queues=[{"name": "a_b"}, {"name": "A.b"}]), "spec.queues"),
    "queue name with a slash": (_spec(queues=[{"name": "bad/name"}]), "spec.queues[0].name"),
    "minReplicas > maxReplicas": (_spec(queues=[{"name": "a", "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}]),
                                  "maxReplicas must be >= minReplicas"),
    "maxReplicas < 1": (_spec(queues=[{"name": "a", "autoscaling": {"maxReplicas": 0}}]),
                        "spec.queues[0].autoscaling.maxReplicas"),
    "more than one broker source": (_spec(broker={"managed": {}, "url": "redis://r:6379/0"}), "spec.broker"),
    "broker url with a password": (_spec(broker={"url": "redis://user:s3cretpw@r:6379/0"}), "spec.broker.url"),
    "broker url of an unknown scheme": (_spec(broker={"url": "http://r:6379/0"}), "spec.broker.url"),
    "result backend url with a password": (_spec(resultBackend={"url": "redis://:s3cretpw@r:6379/1"}),
                                           "spec.resultBackend.url"),
    "concurrency < 1": (_spec(workers={"concurrency": 0}), "spec.workers.concurrency"),
    "queue concurrency < 1": (_spec(queues=[{"name": "a", "concurrency": 0}]), "spec.queues[0].concurrency"),
    "unknown pool": (_spec(workers={"pool": "fork"}), "spec.workers.pool"),
    "poll interval 0": (_spec(autoscaling={"pollIntervalSeconds": 0}), "spec.autoscaling.pollIntervalSeconds"),
    "poll interval over 300": (_spec(autoscaling={"pollIntervalSeconds": 301}), "spec.autoscaling.pollIntervalSeconds"),
    "stabilization over 3600": (_spec(autoscaling={"scaleDownStabilizationSeconds": 3601}),
                                "spec.autoscaling.scaleDownStabilizationSeconds"),
    "heartbeat timeout under 10 s": (_spec(workers={"health": {"heartbeatTimeoutSeconds": 5}}),
                                     "spec.workers.health.heartbeatTimeoutSeconds"),
    "queue idle-with-backlog under 10 s": (_spec(queues=[{"name": "a", "health": {"idleWithBacklogSeconds": 3}}]),
                                           "spec.queues[0].health.idleWithBacklogSeconds"),
    "unknown health action": (_spec(workers={"health": {"action": "Kill"}}), "spec.workers.health.action"),
    "mingle not a boolean": (_spec(workers={"mingle": "yes"}), "spec.workers.mingle"),
    "flower.auth unknown": (_spec(flower={"enabled": True, "auth": "open"}), "spec.flower.auth"),
    "flower.auth oauth without oauth": (_spec(flower={"auth": "oauth"}), "spec.flower.auth oauth needs"),
    "flower.oauth with auth basic": (_spec(flower={"auth": "basic", "oauth": _OAUTH}), "spec.flower.oauth is only"),
    "flower.basicAuthSecretRef with oauth": (_spec(flower={"oauth": _OAUTH, "basicAuthSecretRef": {
        "name": "a", "key": "b"}}), "spec.flower.basicAuthSecretRef"),
    "flower.basicAuthSecretRef without a key": (_spec(flower={"basicAuthSecretRef": {"name": "a"}}),
                                                "spec.flower.basicAuthSecretRef.key"),
    "flower.oauth without a client secret": (_spec(flower={"oauth": {
        k: v for k, v in _OAUTH.items() if k != "clientSecretRef"}}), "spec.flower.oauth.clientSecretRef"),
    "flower.oauth unknown provider": (_spec(flower={"oauth": {**_OAUTH, "provider": "myspace"}}),
                                      "spec.flower.oauth.provider"),
    "flower.oauth redirectUri not a URL": (_spec(flower={"oauth": {**_OAUTH, "redirectUri": "/login"}}),
                                           "spec.flower.oauth.redirectUri"),
    "broker maxMemory not a quantity": (_spec(broker={"managed": {"maxMemory": "lots"}}),
                                        "spec.broker.managed.maxMemory"),
    "broker maxMemory of 0": (_spec(broker={"managed": {"maxMemory": "0"}}), "spec.broker.managed.maxMemory"),
    "networkPolicy.enabled not a boolean": (_spec(networkPolicy={"enabled": "no"}), "spec.networkPolicy.enabled"),
    "flower.allowFrom entry without a peer": (_spec(flower={"allowFrom": [{}]}), "spec.flower.allowFrom"),
    "flower.allowFrom ipBlock with a podSelector": (
        _spec(flower={"allowFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}), "spec.flower.allowFrom"),
    "flower.allowFrom ipBlock without a cidr": (_spec(flower={"allowFrom": [{"ipBlock": {}}]}),
                                                "spec.flower.allowFrom[0].ipBlock.cidr"),
}

BAD_PERIODICJOBS = {
    "both schedule and interval": (_spec(interval="30s"), "spec.schedule and spec.interval"),
    "neither schedule nor interval": (_without("schedule"), "spec.schedule and spec.interval"),
    "interval under 1s": (lambda b: b["spec"].update(schedule=None, interval="500ms") or b["spec"].pop("schedule"),
                          "spec.interval must be at least 1s"),
    "interval not a duration": (lambda b: b["spec"].pop("schedule") and b["spec"].update(interval="soon"),
                                "spec.interval"),
    "cron with four fields": (_spec(schedule="0 3 * *"), "spec.schedule"),
    "missing task": (_without("task"), "spec.task"),
    "missing taskQueueRef": (_without("taskQueueRef"), "spec.taskQueueRef"),
    "taskQueueRef not a TaskQueue name": (_spec(taskQueueRef={"name": "Shop_1"}), "spec.taskQueueRef.name"),
    "timeZone not a zone name": (_spec(timeZone="Europe Berlin; DROP"), "spec.timeZone"),
}


def _apply(devcluster: DevCluster, namespace: str, body: dict[str, Any]):
    return devcluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(body), check=False)


@pytest.mark.parametrize("case", list(BAD_TASKQUEUES))
def test_bad_taskqueue_is_rejected_naming_the_field(devcluster: DevCluster, namespace: str, case: str) -> None:
    change, field_text = BAD_TASKQUEUES[case]
    result = _apply(devcluster, namespace, _edit(_taskqueue, change))
    assert result.returncode != 0, f"{case}: accepted"
    assert field_text in result.stderr, result.stderr
    assert "s3cretpw" not in result.stderr, "the error must not echo a password back"


@pytest.mark.parametrize("case", list(BAD_PERIODICJOBS))
def test_bad_periodicjob_is_rejected_naming_the_field(devcluster: DevCluster, namespace: str, case: str) -> None:
    change, field_text = BAD_PERIODICJOBS[case]
    result = _apply(devcluster, namespace, _edit(_periodicjob, change))
    assert result.returncode != 0, f"{case}: accepted"
    assert field_text in result.stderr, result.stderr


def test_good_objects_and_examples_are_accepted_with_defaults(devcluster: DevCluster, namespace: str) -> None:
    assert _apply(devcluster, namespace, _taskqueue()).returncode == 0
    stored = json.loads(devcluster.kubectl("get", "tq", "shop", "-n", namespace, "-o", "json").stdout)["spec"]
    assert stored["workers"] == {"concurrency": 2, "pool": "prefork", "prefetchMultiplier": 1,
                                 "maxTasksPerChild": 0, "terminationGracePeriodSeconds": 300,
                                 "mingle": False, "gossip": False,
                                 "health": {"action": "Restart", "heartbeatTimeoutSeconds": 30,
                                            "idleWithBacklogSeconds": 60}}
    assert stored["autoscaling"] == {"pollIntervalSeconds": 2, "scaleDownStabilizationSeconds": 60}
    assert stored["queues"][0]["autoscaling"]["minReplicas"] == 0
    assert "concurrency" not in stored["queues"][0], "a queue inherits spec.workers unless it overrides"
    assert stored["networkPolicy"] == {"enabled": True}
    assert stored["flower"]["allowFrom"] == [{"podSelector": {}}], "Flower: every pod of the namespace by default"

    for path in sorted(EXAMPLES.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            result = _apply(devcluster, namespace, document)
            assert result.returncode == 0, f"{path.name}: {result.stderr}"


def test_flower_logins_and_broker_memory_settings_that_fit_together_are_accepted(devcluster: DevCluster,
                                                                                   namespace: str) -> None:
    for flower, broker in (
        ({"enabled": True, "basicAuthSecretRef": {"name": "logins", "key": "users"}},
         {"managed": {"maxMemory": "200Mi", "resources": {"limits": {"memory": "256Mi"}}}}),
        ({"enabled": True, "oauth": _OAUTH, "env": [{"name": "FLOWER_PERSISTENT", "value": "true"}],
          "extraArgs": ["--purge_offline_workers=60"]}, {"managed": {"maxMemory": "64Mi"}}),
        ({"enabled": True, "auth": "none"}, {"managed": {"resources": {"requests": {"memory": "1Gi"}},
                                                         "maxMemory": "900Mi"}}),
    ):
        result = _apply(devcluster, namespace, _edit(_taskqueue, _spec(flower=flower, broker=broker)))
        assert result.returncode == 0, result.stderr


def test_kubectl_explain_describes_autoscaling(devcluster: DevCluster) -> None:
    explained = devcluster.kubectl("explain", "taskqueue.spec.queues.autoscaling").stdout
    for field_name in ("minReplicas", "maxReplicas", "targetTasksPerReplica"):
        assert field_name in explained
    assert "DESCRIPTION" in explained and len(explained.split("DESCRIPTION", 1)[1].split()) > 10
