"""All Kubernetes I/O of the operator (its Kubernetes port): get, list pods, server-side apply, delete,
status, scale, annotate, events, and the create/replace of the leader election's Lease.

One small client over the `kubernetes` package's ApiClient, addressing resources by
(apiVersion, kind) through a fixed table of the kinds the operator touches, so no discovery
round trips are needed. Every write names a field manager; server-side apply always forces,
because the operator is the authority for the fields it applies.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import kubernetes
import urllib3
from kubernetes.client.rest import ApiException

from . import naming

Manifest = dict[str, Any]
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResourceType:
    api_version: str
    kind: str
    plural: str

    def collection_path(self, namespace: str) -> str:
        prefix = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        return f"{prefix}/namespaces/{namespace}/{self.plural}"

    def object_path(self, namespace: str, name: str) -> str:
        return f"{self.collection_path(namespace)}/{name}"


RESOURCE_TYPES: Final[tuple[ResourceType, ...]] = (
    ResourceType("v1", "Secret", "secrets"),
    ResourceType("v1", "Service", "services"),
    ResourceType("v1", "PersistentVolumeClaim", "persistentvolumeclaims"),
    ResourceType("v1", "Pod", "pods"),
    ResourceType("v1", "Event", "events"),
    ResourceType("apps/v1", "Deployment", "deployments"),
    ResourceType("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    ResourceType("coordination.k8s.io/v1", "Lease", "leases"),
    ResourceType(naming.API_VERSION, naming.TASKQUEUE_KIND, naming.TASKQUEUE_PLURAL),
    ResourceType(naming.API_VERSION, naming.PERIODICJOB_KIND, naming.PERIODICJOB_PLURAL),
)
_BY_KIND: Final = {(r.api_version, r.kind): r for r in RESOURCE_TYPES}

NAMESPACE_TERMINATING: Final = "NamespaceTerminating"  # core/v1 NamespaceTerminatingCause
APPLY_PATCH: Final = "application/apply-patch+yaml"
MERGE_PATCH: Final = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH: Final = "application/strategic-merge-patch+json"


def resource_type(api_version: str, kind: str) -> ResourceType:
    try:
        return _BY_KIND[(api_version, kind)]
    except KeyError:
        raise ValueError(f"the operator does not handle {api_version} {kind}") from None


class KubeError(RuntimeError):
    """A request the API server refused or could not answer; `status` is the HTTP status (0 = no answer)."""

    def __init__(self, status: int, reason: str, message: str, causes: tuple[str, ...] = ()):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes  # the types of the Status's details.causes (their "reason" in JSON)

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def namespace_terminating(self) -> bool:
        """A create refused because the namespace is being deleted (with everything in it)."""
        return self.status == 403 and NAMESPACE_TERMINATING in self.causes


def _kube_error(status: int | None, reason: str | None, body: bytes | str | None) -> KubeError:
    """The API server's Status message and causes when it sent one, else the HTTP reason."""
    message, kind, causes = reason or "", reason or "", ()
    try:
        parsed = json.loads(body or "{}")
        message, kind = parsed.get("message", message), parsed.get("reason", kind)
        # a StatusCause's type is serialized as "reason" (metav1.StatusCause: Type `json:"reason"`)
        causes = tuple(str(cause.get("reason")) for cause in (parsed.get("details") or {}).get("causes") or [])
    except (TypeError, ValueError, AttributeError):
        pass
    return KubeError(status or 0, kind, message, causes)


@contextlib.contextmanager
def unless_namespace_terminating(namespace: str, what: str) -> Iterator[None]:
    """Ends a pass quietly once its namespace is being deleted: the API server refuses every create
    there and takes the object away with the rest, so there is nothing to retry or report."""
    try:
        yield
    except KubeError as error:
        if not error.namespace_terminating:
            raise
        logger.info("%s: namespace %s is being deleted; nothing more is created in it", what, namespace)


class Kube:
    """The operator's view of the API server. Thread-safe: the ApiClient pools connections."""

    def __init__(self, api_client: kubernetes.client.ApiClient, timeout_seconds: float = 10.0,
                 write_guard: Callable[[], None] | None = None):
        self._api = api_client
        self._timeout = timeout_seconds
        # called before every write: the leader election's check that this replica still leads
        self._write_guard = write_guard

    @classmethod
    def from_environment(cls, timeout_seconds: float = 10.0,
                         write_guard: Callable[[], None] | None = None) -> "Kube":
        """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
        configuration = kubernetes.client.Configuration()
        try:
            kubernetes.config.load_incluster_config(client_configuration=configuration)
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config(client_configuration=configuration)
        configuration.connection_pool_maxsize = 32
        return cls(kubernetes.client.ApiClient(configuration), timeout_seconds, write_guard)

    def close(self) -> None:
        self._api.close()

    # --- the one place requests go out -------------------------------------------------------

    def _call(self, method: str, path: str, *, body: Any = None, query: list[tuple[str, Any]] | None = None,
              content_type: str | None = None, timeout: float | None = None) -> Any:
        if method != "GET" and self._write_guard is not None:
            self._write_guard()
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        method, url, headers, body, _ = self._api.param_serialize(
            method=method, resource_path=path, query_params=query or [], header_params=headers, body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(method, url, header_params=headers, body=body,
                                          _request_timeout=timeout or self._timeout)
            data = response.read()
        except ApiException as error:
            raise _kube_error(error.status, error.reason, error.body) from None
        except (OSError, urllib3.exceptions.HTTPError) as error:  # refused, reset, timed out
            raise KubeError(0, "Unreachable", str(error)) from None
        if response.status >= 400:
            raise _kube_error(response.status, response.reason, data)
        return json.loads(data) if data else {}

    # --- reads -------------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str, name: str,
            timeout: float | None = None) -> Manifest | None:
        try:
            return self._call("GET", resource_type(api_version, kind).object_path(namespace, name), timeout=timeout)
        except KubeError as error:
            if error.not_found:
                return None
            raise

    def list_pods(self, namespace: str, label_selector: str) -> list[Manifest]:
        path = resource_type("v1", "Pod").collection_path(namespace)
        return self._call("GET", path, query=[("labelSelector", label_selector)]).get("items", [])

    def list_events(self, namespace: str, kind: str, name: str) -> list[Manifest]:
        """The core/v1 Events about the object `kind`/`name` (what `kubectl describe` shows)."""
        path = resource_type("v1", "Event").collection_path(namespace)
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        return self._call("GET", path, query=[("fieldSelector", selector)]).get("items", [])

    # --- writes ------------------------------------------------------------------------------

    def apply(self, manifest: Mapping[str, Any], field_manager: str) -> Manifest:
        """Server-side apply: create or update the fields `manifest` names, owned by `field_manager`."""
        kind = resource_type(manifest["apiVersion"], manifest["kind"])
        metadata = manifest["metadata"]
        return self._call(
            "PATCH", kind.object_path(metadata["namespace"], metadata["name"]), body=dict(manifest),
            query=[("fieldManager", field_manager), ("force", "true")], content_type=APPLY_PATCH,
        )

    def create(self, manifest: Mapping[str, Any], field_manager: str, timeout: float | None = None) -> Manifest:
        """Create an object; a KubeError 409 AlreadyExists when someone else was first (the Lease)."""
        kind, metadata = resource_type(manifest["apiVersion"], manifest["kind"]), manifest["metadata"]
        return self._call("POST", kind.collection_path(metadata["namespace"]), body=dict(manifest),
                          query=[("fieldManager", field_manager)], timeout=timeout)

    def replace(self, manifest: Mapping[str, Any], field_manager: str, timeout: float | None = None) -> Manifest:
        """Replace an object as read: a KubeError 409 Conflict when it changed since (its resourceVersion)."""
        kind, metadata = resource_type(manifest["apiVersion"], manifest["kind"]), manifest["metadata"]
        return self._call("PUT", kind.object_path(metadata["namespace"], metadata["name"]), body=dict(manifest),
                          query=[("fieldManager", field_manager)], timeout=timeout)

    def delete(self, api_version: str, kind: str, namespace: str, name: str,
               uid: str | None = None) -> bool:
        """Delete one object (only if it still has `uid`, when given); False when it was already gone."""
        body: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._call("DELETE", resource_type(api_version, kind).object_path(namespace, name), body=body)
        except KubeError as error:
            if error.not_found:
                return False
            raise
        return True

    def apply_status(self, body: Mapping[str, Any], status: Mapping[str, Any], field_manager: str) -> Manifest:
        """Server-side apply of the status fields `field_manager` owns on the object `body` describes;
        other writers' fields stay (see status.py)."""
        metadata = body["metadata"]
        api_version, kind = body["apiVersion"], body["kind"]
        path = resource_type(api_version, kind).object_path(metadata["namespace"], metadata["name"]) + "/status"
        patch = {"apiVersion": api_version, "kind": kind,
                 "metadata": {"name": metadata["name"], "namespace": metadata["namespace"]}, "status": dict(status)}
        return self._call("PATCH", path, body=patch, query=[("fieldManager", field_manager), ("force", "true")],
                          content_type=APPLY_PATCH)

    def annotate(self, api_version: str, kind: str, namespace: str, name: str,
                 annotations: Mapping[str, str | None]) -> Manifest:
        """Merge-patch annotations (None removes one): pod-deletion-cost on worker pods."""
        path = resource_type(api_version, kind).object_path(namespace, name)
        return self._call("PATCH", path, body={"metadata": {"annotations": dict(annotations)}},
                          content_type=MERGE_PATCH)

    def set_pod_condition(self, namespace: str, name: str, condition: Mapping[str, Any]) -> Manifest:
        """Set one condition of a pod's status (a strategic merge: conditions merge by type, the
        kubelet's stay): the worker pods' readiness gate."""
        path = resource_type("v1", "Pod").object_path(namespace, name) + "/status"
        return self._call("PATCH", path, body={"status": {"conditions": [dict(condition)]}},
                          content_type=STRATEGIC_MERGE_PATCH)

    def scale(self, namespace: str, deployment: str, replicas: int, field_manager: str) -> Manifest:
        """Set a Deployment's replicas through its scale subresource, owned by `field_manager`."""
        path = resource_type("apps/v1", "Deployment").object_path(namespace, deployment) + "/scale"
        body = {"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": deployment, "namespace": namespace}, "spec": {"replicas": replicas}}
        return self._call("PATCH", path, body=body, query=[("fieldManager", field_manager), ("force", "true")],
                          content_type=APPLY_PATCH)

    def post_event(self, involved: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
        """Record a core/v1 Event on `involved` (a full object body). Failures are logged, not raised."""
        metadata = involved["metadata"]
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{metadata['name']}.{uuid.uuid4().hex[:16]}", "namespace": metadata["namespace"]},
            "involvedObject": {"apiVersion": involved["apiVersion"], "kind": involved["kind"],
                               "name": metadata["name"], "namespace": metadata["namespace"],
                               "uid": metadata.get("uid"), "resourceVersion": metadata.get("resourceVersion")},
            "type": event_type, "reason": reason, "message": message[:1024],
            "source": {"component": naming.MANAGED_BY}, "reportingComponent": naming.MANAGED_BY,
            "reportingInstance": naming.MANAGED_BY, "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self._call("POST", resource_type("v1", "Event").collection_path(metadata["namespace"]), body=event)
        except KubeError as error:
            logger.warning("could not record event %s on %s/%s: %s", reason, metadata["namespace"],
                           metadata["name"], error)
