"""A pod's ServiceAccount credentials: a bound token (TokenRequest) written as a kubeconfig.

Where a kubelet projects the token into /var/run/secrets/kubernetes.io/serviceaccount, the agent
writes the same three files (token, ca.crt, namespace) into `<pod dir>/serviceaccount/` plus a
kubeconfig naming this API server and the cluster CA, and gives the pod's processes
KUBECONFIG=<that kubeconfig>. Without KUBERNETES_SERVICE_HOST, in-cluster-or-kubeconfig clients
(kubernetes, kopf, kubectl) fall back to it and act as the ServiceAccount, under RBAC.
The token is requested bound to the pod, like the kubelet does (3607 s), and refreshed once 80% of
its lifetime (at most 24 h) has passed.
"""

from __future__ import annotations

import base64
import calendar
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

DEFAULT_EXPIRATION_SECONDS = 3607
MAX_TOKEN_AGE_SECONDS = 24 * 3600


def wants_token(pod: Mapping[str, Any]) -> tuple[bool, int]:
    """Whether the pod gets a ServiceAccount token, and the lifetime to request.
    The ServiceAccount admission plugin adds a projected `serviceAccountToken` volume exactly when
    automounting applies (pod and ServiceAccount settings both considered); without that plugin,
    an explicit automountServiceAccountToken: true still asks for one."""
    spec = pod.get("spec") or {}
    for volume in spec.get("volumes") or ():
        for source in ((volume.get("projected") or {}).get("sources") or ()):
            token = source.get("serviceAccountToken")
            if token is not None and not token.get("audience"):
                return True, int(token.get("expirationSeconds") or DEFAULT_EXPIRATION_SECONDS)
    if spec.get("automountServiceAccountToken") is True:
        return True, DEFAULT_EXPIRATION_SECONDS
    return False, 0


def token_request(pod: Mapping[str, Any], expiration_seconds: int) -> dict[str, Any]:
    metadata = pod["metadata"]
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [],
            "expirationSeconds": expiration_seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": metadata["name"], "uid": metadata["uid"]},
        },
    }


def parse_timestamp(text: str) -> float:
    return float(calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S")))


def refresh_at(issued_at: float, expires_at: float) -> float:
    """When to ask for a new token: after 80% of its lifetime, or after 24 h."""
    return issued_at + min(0.8 * max(0.0, expires_at - issued_at), MAX_TOKEN_AGE_SECONDS)


@dataclass(frozen=True)
class Credentials:
    kubeconfig: Path
    refresh_at: float


def service_account_name(pod: Mapping[str, Any]) -> str:
    return (pod.get("spec") or {}).get("serviceAccountName") or "default"


def _write(path: Path, content: str | bytes, mode: int = 0o600) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    if isinstance(content, str):
        content = content.encode()
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
    temporary.replace(path)


def write_credentials(directory: Path, *, server: str, ca_data: bytes, namespace: str, service_account: str,
                      token: str) -> Path:
    """Write token, ca.crt, namespace and kubeconfig; return the kubeconfig's path."""
    directory.mkdir(parents=True, exist_ok=True)
    user = f"system:serviceaccount:{namespace}:{service_account}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "devcluster", "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca_data).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": user,
                                                         "namespace": namespace}}],
        "current-context": "devcluster",
    }
    _write(directory / "token", token)
    _write(directory / "ca.crt", ca_data, 0o644)
    _write(directory / "namespace", namespace, 0o644)
    kubeconfig = directory / "kubeconfig"
    _write(kubeconfig, yaml.safe_dump(config, sort_keys=False))
    return kubeconfig
