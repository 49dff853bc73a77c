"""Flower, when spec.flower.enabled: Deployment and Service `<tq>-flower` on port 5555.

Flower needs no app code: `celery flower` without -A reads the broker from CELERY_BROKER_URL.

Flower is never open by accident: Flower shows every task's arguments and can revoke tasks and
shut workers down, and it has no login unless told to. spec.flower.auth is `basic` unless set:
the users of basicAuthSecretRef, or else a password the operator generates once into the Secret
`<tq>-flower` (keys username, password and auth = username:password). `oauth` passes Flower's own
OAuth2 settings; `none` is the explicit opt-out (e.g. behind an authenticating proxy). Credentials
reach Flower as FLOWER_* variables from Secrets (secretKeyRef), never in the manifest. Flower reads
FLOWER_<option> variables before its command line, so spec.flower.extraArgs win over them.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from .. import naming
from ..models import FLOWER_OAUTH_PROVIDERS, FlowerSpec, ObjectIdentity, TaskQueueSpec
from .common import (
    DEFAULT_FLOWER_RESOURCES,
    POD_IP_ENV,
    TMP_VOLUME,
    Manifest,
    broker_url_env_var,
    celery_pod_template,
    cluster_ip_service,
    deployment,
    object_meta,
    pod_ip_env_var,
    resources_or_default,
    restricted_container_security_context,
    secret_env_var,
)
from .secret import b64

FLOWER_USER_ID: Final = 1000  # the `flower` user of the mher/flower image, named (not numbered) in its USER
FLOWER_USERNAME: Final = "admin"  # of the generated basic-auth credentials
FLOWER_SECRET_USERNAME_KEY: Final = "username"
FLOWER_SECRET_PASSWORD_KEY: Final = naming.BROKER_SECRET_PASSWORD_KEY  # "password", like our other Secrets
FLOWER_SECRET_AUTH_KEY: Final = "auth"  # username:password, what FLOWER_BASIC_AUTH takes
# Flower's persistent mode (--persistent) writes its state file here, on the /tmp emptyDir: the
# root filesystem is read-only. A flower.env entry FLOWER_DB replaces it.
FLOWER_DB_PATH: Final = "/tmp/flower.db"


def flower_command(extra_args: tuple[str, ...] = ()) -> list[str]:
    return ["celery", "flower", f"--port={naming.FLOWER_PORT}", f"--address=$({POD_IP_ENV})", *extra_args]


def flower_auth_env(owner: ObjectIdentity, flower: FlowerSpec) -> list[dict[str, Any]]:
    """Flower's login settings as FLOWER_* variables; secrets only through secretKeyRef."""
    if flower.auth == "basic":
        ref = flower.basic_auth_secret_ref
        name, key = (ref.name, ref.key) if ref else (naming.flower_name(owner.name), FLOWER_SECRET_AUTH_KEY)
        return [secret_env_var("FLOWER_BASIC_AUTH", name, key)]
    if flower.auth == "oauth":
        oauth = flower.oauth
        assert oauth is not None
        return [
            {"name": "FLOWER_AUTH_PROVIDER", "value": FLOWER_OAUTH_PROVIDERS[oauth.provider]},
            {"name": "FLOWER_AUTH", "value": oauth.allowed_emails},
            {"name": "FLOWER_OAUTH2_KEY", "value": oauth.client_id},
            secret_env_var("FLOWER_OAUTH2_SECRET", oauth.client_secret_ref.name, oauth.client_secret_ref.key),
            {"name": "FLOWER_OAUTH2_REDIRECT_URI", "value": oauth.redirect_uri},
        ]
    return []


def flower_env(owner: ObjectIdentity, flower: FlowerSpec) -> list[dict[str, Any]]:
    """Our defaults, flower.env over them, then the broker URL and the login, which flower.env cannot
    replace (a duplicate name would also break server-side apply: env is keyed by name)."""
    fixed = [broker_url_env_var(owner.name), *flower_auth_env(owner, flower)]
    reserved = {item["name"] for item in fixed} | {POD_IP_ENV}
    user = [copy.deepcopy(dict(item)) for item in flower.env if item.get("name") not in reserved]
    user_names = {item.get("name") for item in user}
    defaults = [{"name": "FLOWER_DB", "value": FLOWER_DB_PATH}]
    return [pod_ip_env_var(), *(d for d in defaults if d["name"] not in user_names), *user, *fixed]


def build_flower_secret(owner: ObjectIdentity, password: str) -> Manifest:
    """`<tq>-flower`: the generated basic-auth login (spec.flower.auth basic without basicAuthSecretRef)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_meta(owner, naming.flower_name(owner.name), naming.FLOWER),
        "type": "Opaque",
        "data": {
            FLOWER_SECRET_USERNAME_KEY: b64(FLOWER_USERNAME),
            FLOWER_SECRET_PASSWORD_KEY: b64(password),
            FLOWER_SECRET_AUTH_KEY: b64(f"{FLOWER_USERNAME}:{password}"),
        },
    }


def build_flower_deployment(owner: ObjectIdentity, spec: TaskQueueSpec, default_image: str) -> Manifest:
    flower = spec.flower
    container: dict[str, Any] = {
        "name": "flower",
        "image": flower.image or default_image,
        "command": flower_command(flower.extra_args),
        "env": flower_env(owner, flower),
        "ports": [{"name": "http", "containerPort": naming.FLOWER_PORT, "protocol": "TCP"}],
        "readinessProbe": {  # Flower serves /healthcheck without a login
            "httpGet": {"path": "/healthcheck", "port": "http"},
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
        # liveness counts once Flower first answered: a slow start on a loaded node is no hang
        "startupProbe": {"httpGet": {"path": "/healthcheck", "port": "http"},
                         "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 30},
        "livenessProbe": {"httpGet": {"path": "/healthcheck", "port": "http"},
                          "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3},
        "resources": resources_or_default(flower.resources, DEFAULT_FLOWER_RESOURCES),
        "securityContext": restricted_container_security_context(read_only_root_filesystem=True),
        "volumeMounts": [{"name": TMP_VOLUME, "mountPath": "/tmp"}],
    }
    # runAsNonRoot cannot verify a named USER, so the default names the image's user by id.
    default_security_context = {
        "runAsNonRoot": True,
        "runAsUser": FLOWER_USER_ID,
        "runAsGroup": FLOWER_USER_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    template = celery_pod_template(
        spec,
        owner=owner,
        component=naming.FLOWER,
        containers=[container],
        default_security_context=default_security_context,
    )
    template["spec"]["enableServiceLinks"] = False  # Flower reads FLOWER_* variables; keep Service env out
    template["spec"]["automountServiceAccountToken"] = False  # Flower talks to the broker, never to the API
    return deployment(
        owner, name=naming.flower_name(owner.name), component=naming.FLOWER, template=template, replicas=1
    )


def build_flower_service(owner: ObjectIdentity) -> Manifest:
    return cluster_ip_service(
        owner, name=naming.flower_name(owner.name), component=naming.FLOWER, port=naming.FLOWER_PORT, port_name="http"
    )


def build_flower(owner: ObjectIdentity, spec: TaskQueueSpec, default_image: str,
                 password: str | None = None) -> list[Manifest]:
    """Deployment and Service when Flower is enabled (and the Secret of a generated login, whose
    `password` the reconciler generates once), else nothing."""
    if not spec.flower.enabled:
        return []
    manifests = []
    if spec.flower.generated_password:
        if not password:
            raise ValueError("Flower's generated login needs its password")
        manifests.append(build_flower_secret(owner, password))
    return [*manifests, build_flower_deployment(owner, spec, default_image), build_flower_service(owner)]
