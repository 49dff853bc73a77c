"""The beat of a TaskQueue: `<tq>-beat` (exactly one pod, Recreate) and, for an AMQP broker, the
small Redis `<tq>-beat-state` (Secret, Deployment, Service) that holds the schedule state.

Two kinds of beat:

- the operator's own (spec.beat.scheduler empty, PeriodicJobs refer to the TaskQueue):
  `python -m celery_operator.beat` from the operator's image (setting `beat_image`), so users add
  nothing to theirs. It reads the schedule the operator writes to Redis and sends the tasks by
  name; it runs no user code and needs no Kubernetes API access (no token is mounted). Both URLs
  come from Secrets (secretKeyRef), never in plain text: CELERY_BROKER_URL to send, and
  CELERY_OPERATOR_BEAT_STATE_URL for the state (the broker itself when it is Redis, else
  `<tq>-beat-state`).
- a custom scheduler (spec.beat.scheduler set): `celery -A <app> beat -S <scheduler>` from
  spec.image with the TaskQueue's env, envFrom and broker URL, exactly like a worker (the
  django_celery_beat DatabaseScheduler case).

Both are exec form: SIGTERM reaches the beat itself, which stops cleanly.

Liveness: the operator's own beat serves `GET /healthz` on its container port `health` (8081)
from a daemon thread, answered from a timestamp its loop keeps (beat/health.py): 200 while the
loop goes round, failing or not (an unreachable Redis does not make it unhealthy: a restart would
not help), 503 once the loop is wedged. A frozen process answers nothing and the probe times out.
The kubelet restarts the container after three failed probes 5 s apart, giving a wedged beat 5 s
instead of the pod's 30 to stop, so a frozen beat is replaced within about 20 s. It costs one HTTP
GET every 5 s: no process is spawned (unlike an exec probe), the broker is not asked. A custom
scheduler gets no probe: we cannot add an endpoint to the user's image, and `celery inspect`-style
exec probes cost seconds of CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

from .. import naming
from ..models import ObjectIdentity, TaskQueueSpec
from .broker import build_redis_deployment
from .common import (
    BROKER_URL_ENV,
    DEFAULT_BEAT_RESOURCES,
    OWN_BEAT_RESOURCES,
    DefaultImages,
    Manifest,
    broker_url_env_var,
    celery_container,
    celery_pod_template,
    cluster_ip_service,
    deployment,
    object_meta,
    resources_or_default,
    restricted_container_security_context,
    secret_env_var,
)
from .secret import b64, redis_service_url

BEAT_CONTAINER: Final = "beat"
BEAT_MODULE: Final = "celery_operator.beat"
# The beat stops within a second of SIGTERM; the grace period only bounds a hung send.
BEAT_TERMINATION_GRACE_PERIOD_SECONDS: Final = 30
BEAT_HEALTH_PORT: Final = 8081
BEAT_HEALTH_PORT_NAME: Final = "health"
BEAT_HEALTH_PATH: Final = "/healthz"  # beat/health.py's HEALTH_PATH (builders import no beat code)
# A beat the probe found wedged or frozen will not stop by itself: no point waiting 30 s for it.
BEAT_LIVENESS_GRACE_PERIOD_SECONDS: Final = 5

# The schedule-state Redis holds a few keys per PeriodicJob: requests keep it off BestEffort.
BEAT_STATE_RESOURCES: Final = {"requests": {"cpu": "10m", "memory": "32Mi"}}

StateRedis = Literal["broker", "managed"]  # which Redis holds the schedule state


@dataclass(frozen=True)
class BeatOptions:
    """What the beat builders need beyond the spec; None (no options) means no beat at all.

    custom: spec.beat.scheduler is set (the user's own scheduler from spec.image).
    state: where the schedule state lives: the broker (a Redis broker) or `<tq>-beat-state`.
    state_password: the `<tq>-beat-state` Redis password (generated once by the reconciler).
    """

    custom: bool
    state: StateRedis = "broker"
    state_password: str | None = field(default=None, repr=False)


def beat_command() -> list[str]:
    return ["python", "-m", BEAT_MODULE]


def beat_args() -> list[str]:
    return ["--health-port", str(BEAT_HEALTH_PORT)]


def beat_liveness_probe() -> dict[str, Any]:
    """Three failed GETs 5 s apart (a frozen beat times each out after 2 s), then a restart."""
    return {
        "httpGet": {"path": BEAT_HEALTH_PATH, "port": BEAT_HEALTH_PORT_NAME},
        "periodSeconds": 5,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
        "terminationGracePeriodSeconds": BEAT_LIVENESS_GRACE_PERIOD_SECONDS,
    }


def beat_startup_probe() -> dict[str, Any]:
    """Up to 60 s for the process to start serving (a loaded node can take tens of seconds to start
    Python); liveness counts only from the first success, so a slow start is not a wedged loop."""
    return {
        "httpGet": {"path": BEAT_HEALTH_PATH, "port": BEAT_HEALTH_PORT_NAME},
        "periodSeconds": 2,
        "timeoutSeconds": 2,
        "failureThreshold": 30,
    }


def custom_beat_command(app: str, scheduler: str) -> list[str]:
    return ["celery", "-A", app, "beat", "-S", scheduler]


def state_secret_name(owner: ObjectIdentity, state: StateRedis) -> str:
    """The Secret whose key `url` reaches the schedule state."""
    return naming.broker_name(owner.name) if state == "broker" else naming.beat_state_name(owner.name)


def beat_state_url(owner: ObjectIdentity, password: str) -> str:
    return redis_service_url(naming.beat_state_name(owner.name), owner.namespace, password)


def _own_beat_container(owner: ObjectIdentity, spec: TaskQueueSpec, options: BeatOptions,
                        image: str) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": BEAT_CONTAINER,
        "image": image,
        "command": beat_command(),
        "args": beat_args(),
        "env": [
            broker_url_env_var(owner.name),
            secret_env_var(naming.BEAT_STATE_URL_ENV, state_secret_name(owner, options.state),
                           naming.BROKER_SECRET_URL_KEY),
            {"name": naming.BEAT_KEY_PREFIX_ENV, "value": naming.beat_key_prefix(owner.namespace, owner.name)},
            {"name": naming.BEAT_INSTANCE_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "ports": [{"name": BEAT_HEALTH_PORT_NAME, "containerPort": BEAT_HEALTH_PORT, "protocol": "TCP"}],
        "startupProbe": beat_startup_probe(),
        "livenessProbe": beat_liveness_probe(),
    }
    container["resources"] = resources_or_default(spec.beat.resources, OWN_BEAT_RESOURCES)
    container["securityContext"] = restricted_container_security_context(read_only_root_filesystem=True)
    return container


def build_beat_deployment(owner: ObjectIdentity, spec: TaskQueueSpec, options: BeatOptions, image: str) -> Manifest:
    """`<tq>-beat`: 1 replica, Recreate (the old pod is gone before the new one starts).

    `image`: the operator's, for its own beat, which gets the liveness probe; a custom scheduler
    runs from spec.image, without a probe (its image has no endpoint of ours to ask).
    """
    if options.custom:
        container = celery_container(
            spec, taskqueue=owner.name, name=BEAT_CONTAINER,
            command=custom_beat_command(spec.app, spec.beat.scheduler),
            resources=resources_or_default(spec.beat.resources, DEFAULT_BEAT_RESOURCES),
        )
        template = celery_pod_template(spec, owner=owner, component=naming.BEAT, containers=[container])
    else:
        template = celery_pod_template(spec, owner=owner, component=naming.BEAT,
                                       containers=[_own_beat_container(owner, spec, options, image)],
                                       termination_grace_period_seconds=BEAT_TERMINATION_GRACE_PERIOD_SECONDS)
        pod_spec = template["spec"]
        # The operator's image: the user's service account and pull secrets are for spec.image.
        pod_spec.pop("serviceAccountName", None)
        pod_spec.pop("serviceAccount", None)
        pod_spec.pop("imagePullSecrets", None)
        pod_spec["automountServiceAccountToken"] = False  # the beat never talks to the API server
        pod_spec["enableServiceLinks"] = False
    template["metadata"]["labels"][naming.LABEL_BEAT_ROLE] = naming.BEAT_ROLE_SCHEDULER
    return deployment(owner, name=naming.beat_name(owner.name), component=naming.BEAT, template=template,
                      replicas=1, recreate=True, beat_role=naming.BEAT_ROLE_SCHEDULER)


def build_beat_state_secret(owner: ObjectIdentity, password: str) -> Manifest:
    """`<tq>-beat-state`: key `url` (what the beat and the operator use) and key `password`."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_meta(owner, naming.beat_state_name(owner.name), naming.BEAT,
                                beat_role=naming.BEAT_ROLE_STATE),
        "type": "Opaque",
        "data": {naming.BROKER_SECRET_URL_KEY: b64(beat_state_url(owner, password)),
                 naming.BROKER_SECRET_PASSWORD_KEY: b64(password)},
    }


def build_beat_state(owner: ObjectIdentity, password: str, redis_image: str) -> list[Manifest]:
    """Secret, Deployment and Service of the schedule-state Redis (AMQP brokers only).

    The same Redis as the managed broker, under another name. Its AOF sits on an emptyDir: it
    survives a container restart; if the pod is replaced, the operator rewrites the job list within
    one resync and the beat starts from the next due run (what was sent before is forgotten).
    """
    name = naming.beat_state_name(owner.name)
    return [
        build_beat_state_secret(owner, password),
        build_redis_deployment(owner, image=redis_image, resources=BEAT_STATE_RESOURCES, name=name,
                               component=naming.BEAT, append_only=True, beat_role=naming.BEAT_ROLE_STATE),
        cluster_ip_service(owner, name=name, component=naming.BEAT, port=naming.REDIS_PORT, port_name="redis",
                           beat_role=naming.BEAT_ROLE_STATE),
    ]


def build_beat(owner: ObjectIdentity, spec: TaskQueueSpec, options: BeatOptions | None,
               images: DefaultImages) -> list[Manifest]:
    """Every beat child the TaskQueue should have now (state pieces first, the beat last)."""
    if options is None:
        return []
    children: list[Manifest] = []
    if not options.custom and options.state == "managed":
        if not options.state_password:
            raise ValueError("the beat-state Redis needs its password")
        children += build_beat_state(owner, options.state_password, images.redis)
    children.append(build_beat_deployment(owner, spec, options, images.beat))
    return children


__all__ = [
    "BEAT_CONTAINER",
    "BEAT_HEALTH_PATH",
    "BEAT_HEALTH_PORT",
    "BROKER_URL_ENV",
    "BeatOptions",
    "beat_args",
    "beat_command",
    "beat_liveness_probe",
    "beat_state_url",
    "build_beat",
    "build_beat_deployment",
    "build_beat_state",
    "custom_beat_command",
    "state_secret_name",
]
