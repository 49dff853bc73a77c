"""TaskQueue objects for end-to-end tests: build, apply, read, and wait on their conditions."""

from __future__ import annotations

import copy
import json
from typing import Any

import kubernetes

from tests.helpers.devcluster import DevCluster
from tests.helpers.waiting import wait_for

GROUP, VERSION, PLURAL = "celery-operator.dev", "v1alpha1", "taskqueues"
SAMPLE_APP_IMAGE = "ghcr.io/celery-operator/sample-app:0.1.0"  # app/Dockerfile, built and loaded by devcluster


def taskqueue(name: str, queues: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "TaskQueue", "metadata": {"name": name},
        "spec": {"image": SAMPLE_APP_IMAGE, "app": "myproject",
                 "queues": queues if queues is not None else [{"name": "jobs", "replicas": 0}]},
    }
    body["spec"].update(copy.deepcopy(spec))
    return body


class CustomResources:
    """Reads and writes one kind of ours in one namespace."""

    plural = ""

    def __init__(self, cluster: DevCluster, namespace: str):
        self.cluster = cluster
        self.namespace = namespace
        self.api_client = cluster.api_client()
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self.apps = kubernetes.client.AppsV1Api(self.api_client)

    def close(self) -> None:
        self.api_client.close()

    def apply(self, body: dict[str, Any]) -> None:
        self.cluster.kubectl("apply", "-n", self.namespace, "-f", "-", input=json.dumps(body))

    def get(self, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, self.plural, name)


class TaskQueues(CustomResources):
    plural = PLURAL

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec})

    def condition(self, name: str, condition_type: str) -> dict[str, Any] | None:
        for condition in self.get(name).get("status", {}).get("conditions", []):
            if condition["type"] == condition_type:
                return condition
        return None

    def wait_condition(self, name: str, condition_type: str, status: str, reason: str | None = None,
                       timeout: float = 60) -> dict[str, Any]:
        def matches() -> dict[str, Any] | None:
            found = self.condition(name, condition_type)
            if found and found["status"] == status and (reason is None or found["reason"] == reason):
                if found.get("observedGeneration") == self.get(name)["metadata"]["generation"]:
                    return found
            return None

        return wait_for(matches, timeout, f"{condition_type}={status} ({reason}) on TaskQueue {name}")

    def deployment(self, name: str) -> Any | None:
        try:
            return self.apps.read_namespaced_deployment(name, self.namespace)
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def events(self, name: str) -> list[Any]:
        selector = f"involvedObject.name={name},involvedObject.kind=TaskQueue"
        return self.core.list_namespaced_event(self.namespace, field_selector=selector).items

    def resource_versions(self, name: str) -> dict[str, str]:
        """The resourceVersion of the TaskQueue and of every object labelled as its child."""
        selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/managed-by=celery-operator"
        versions = {f"TaskQueue/{name}": self.get(name)["metadata"]["resourceVersion"]}
        for kind, listing in (
            ("Deployment", self.apps.list_namespaced_deployment),
            ("Service", self.core.list_namespaced_service),
            ("Secret", self.core.list_namespaced_secret),
            ("PersistentVolumeClaim", self.core.list_namespaced_persistent_volume_claim),
            ("NetworkPolicy", kubernetes.client.NetworkingV1Api(self.api_client).list_namespaced_network_policy),
        ):
            for item in listing(self.namespace, label_selector=selector).items:
                versions[f"{kind}/{item.metadata.name}"] = item.metadata.resource_version
        return versions
