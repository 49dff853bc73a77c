"""Parsed, validated, frozen views of TaskQueue and PeriodicJob specs. No I/O.

The CRD schema applies defaults and rejects most bad input at admission; parsing applies the same
defaults again (a spec from a unit test, or stored before a default existed, works the same) and
re-checks what the operator relies on. Anything wrong raises `SpecError` naming the field path, in
words a user can act on.

Kubernetes passthrough values (env, resources, affinity, ...) are kept as plain JSON values and
copied by the builders before they go into a manifest.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from kubernetes.utils.quantity import parse_quantity

from . import naming

DEFAULT_CONCURRENCY: Final = 2
DEFAULT_POOL: Final = "prefork"
POOLS: Final = ("prefork", "threads", "solo", "gevent", "eventlet")
DEFAULT_PREFETCH_MULTIPLIER: Final = 1
DEFAULT_MAX_TASKS_PER_CHILD: Final = 0
DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS: Final = 300
DEFAULT_REPLICAS: Final = 1
DEFAULT_MIN_REPLICAS: Final = 0
DEFAULT_POLL_INTERVAL_SECONDS: Final = 2
POLL_INTERVAL_RANGE: Final = (1, 300)
DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS: Final = 60
SCALE_DOWN_STABILIZATION_RANGE: Final = (0, 3600)
DEFAULT_TIME_ZONE: Final = "UTC"
IMAGE_PULL_POLICIES: Final = ("Always", "IfNotPresent", "Never")
BROKER_URL_SCHEMES: Final = ("redis", "rediss", "amqp", "amqps")
MAX_QUEUES: Final = 50
HEALTH_ACTIONS: Final = ("Restart", "Report")
DEFAULT_HEALTH_ACTION: Final = "Restart"
DEFAULT_HEARTBEAT_TIMEOUT_SECONDS: Final = 30
DEFAULT_IDLE_WITH_BACKLOG_SECONDS: Final = 60
# A worker heartbeats every 2 s and counts as silent after 5 s: a shorter threshold would restart
# workers for one late heartbeat.
MIN_STUCK_THRESHOLD_SECONDS: Final = 10

# The regular expressions below are also the CRD's CEL rules, character for character (a unit test
# checks), so admission and the operator agree.
# scheme://user:password@ or scheme://:password@ — credentials belong in a Secret (urlSecretRef).
URL_WITH_PASSWORD_PATTERN: Final = "^[A-Za-z][-A-Za-z0-9+.]*://[^/@]*:[^/@]*@"
BROKER_URL_SCHEME_PATTERN: Final = "^(redis|rediss|amqp|amqps)://"
GO_DURATION_PATTERN: Final = "^([0-9]+([.][0-9]+)?(ns|us|µs|μs|ms|s|m|h))+$"
CRON_SCHEDULE_PATTERN: Final = (
    "^(@(hourly|daily|weekly|monthly|yearly)|[0-9A-Za-z*/,?-]+( +[0-9A-Za-z*/,?-]+){4})$"
)
_URL_WITH_PASSWORD = re.compile(URL_WITH_PASSWORD_PATTERN)
_URL_SCHEME = re.compile(r"^([A-Za-z][-A-Za-z0-9+.]*)://")
_GO_DURATION = re.compile(GO_DURATION_PATTERN)
_GO_DURATION_PART = re.compile(r"([0-9]+(?:[.][0-9]+)?)(ns|us|µs|μs|ms|s|m|h)")
_GO_DURATION_UNIT_SECONDS: Final = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
CRON_MACROS: Final = ("@hourly", "@daily", "@weekly", "@monthly", "@yearly")
_CRON_SCHEDULE = re.compile(CRON_SCHEDULE_PATTERN)


class SpecError(ValueError):
    """A spec the operator cannot run; `field` is the path a user would edit (`spec.queues[0].name`)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class ObjectIdentity:
    """Who owns the children: enough for ownerReferences, names and namespaces."""

    name: str
    namespace: str
    uid: str
    generation: int = 0
    api_version: str = naming.API_VERSION
    kind: str = naming.TASKQUEUE_KIND

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ObjectIdentity:
        metadata = body.get("metadata") or {}
        return cls(
            name=str(metadata["name"]),
            namespace=str(metadata.get("namespace") or "default"),
            uid=str(metadata.get("uid") or ""),
            generation=int(metadata.get("generation") or 0),
            api_version=str(body.get("apiVersion") or naming.API_VERSION),
            kind=str(body.get("kind") or naming.TASKQUEUE_KIND),
        )

    def owner_reference(self) -> dict[str, Any]:
        """A controller reference: garbage collection deletes the child with its owner."""
        return {
            "apiVersion": self.api_version,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class WorkerHealth:
    """`workers.health`: when a worker counts as stuck, and what the operator does about it.

    heartbeat_timeout_seconds: its heartbeats stopped this long while its container runs (0 = never).
    idle_with_backlog_seconds: free slots, messages waiting in its queue, nothing taken for this long
    (0 = never).
    action: Restart (delete the pod, its Deployment makes a new one) or Report (Event and metric only).
    """

    action: str = DEFAULT_HEALTH_ACTION
    heartbeat_timeout_seconds: int = DEFAULT_HEARTBEAT_TIMEOUT_SECONDS
    idle_with_backlog_seconds: int = DEFAULT_IDLE_WITH_BACKLOG_SECONDS

    @property
    def restarts(self) -> bool:
        return self.action == "Restart"


@dataclass(frozen=True)
class WorkerSettings:
    """How a queue's workers run; `spec.workers`, possibly overridden per queue."""

    concurrency: int = DEFAULT_CONCURRENCY
    pool: str = DEFAULT_POOL
    prefetch_multiplier: int = DEFAULT_PREFETCH_MULTIPLIER
    max_tasks_per_child: int = DEFAULT_MAX_TASKS_PER_CHILD
    termination_grace_period_seconds: int = DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS
    resources: Mapping[str, Any] = field(default_factory=dict)
    extra_args: tuple[str, ...] = ()
    mingle: bool = False  # Celery's start-up sync with the other workers (revoked ids, logical clock)
    gossip: bool = False  # Celery's worker-to-worker events (leader election for bootsteps that ask)
    health: WorkerHealth = field(default_factory=WorkerHealth)


@dataclass(frozen=True)
class QueueAutoscaling:
    min_replicas: int
    max_replicas: int
    target_tasks_per_replica: int


@dataclass(frozen=True)
class QueueSpec:
    name: str
    replicas: int
    autoscaling: QueueAutoscaling | None
    workers: WorkerSettings  # effective: the queue's overrides applied over spec.workers

    @property
    def dns_name(self) -> str:
        return naming.queue_dns_name(self.name)

    @property
    def autoscaled(self) -> bool:
        return self.autoscaling is not None


DEFAULT_BROKER_VOLUME_SIZE: Final = "1Gi"
CLAIM_ACCESS_MODES: Final = ("ReadWriteOncePod", "ReadWriteOnce")


@dataclass(frozen=True)
class Persistence:
    """The managed broker's volume claim; Redis keeps an append-only file on it."""
    size: str = DEFAULT_BROKER_VOLUME_SIZE
    storage_class_name: str = ""  # "" = the cluster's default StorageClass
    access_mode: str = "ReadWriteOncePod"  # or ReadWriteOnce, for storage without the former


@dataclass(frozen=True)
class ManagedBroker:
    image: str | None = None  # None: the operator's setting CELERY_OPERATOR_REDIS_IMAGE
    resources: Mapping[str, Any] = field(default_factory=dict)  # {} = the builder's defaults
    persistence: Persistence | None = Persistence()  # None: an emptyDir, lost with the pod (an explicit choice)
    max_memory: str | None = None  # Redis maxmemory (a quantity); None = derived from the memory limit


BrokerKind = Literal["managed", "url", "secretRef"]


@dataclass(frozen=True)
class BrokerSpec:
    """Exactly one of `managed`, `url`, `url_secret_ref` is set, as `kind` says."""

    kind: BrokerKind
    managed: ManagedBroker | None = None
    url: str | None = None
    url_secret_ref: SecretKeyRef | None = None


@dataclass(frozen=True)
class ResultBackendSpec:
    """Exactly one of `url`, `url_secret_ref` is set."""

    url: str | None = None
    url_secret_ref: SecretKeyRef | None = None


@dataclass(frozen=True)
class PodOverrides:
    annotations: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] = field(default_factory=dict)
    priority_class_name: str = ""
    security_context: Mapping[str, Any] | None = None  # None = the restricted default


@dataclass(frozen=True)
class AutoscalingBehavior:
    poll_interval_seconds: int = DEFAULT_POLL_INTERVAL_SECONDS
    scale_down_stabilization_seconds: int = DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS


@dataclass(frozen=True)
class BeatSpec:
    scheduler: str = ""  # "" = the operator's scheduler fed from PeriodicJobs
    resources: Mapping[str, Any] = field(default_factory=dict)

    @property
    def custom_scheduler(self) -> bool:
        return self.scheduler != ""


FLOWER_AUTH_MODES: Final = ("basic", "oauth", "none")
# spec.flower.oauth.provider -> the login handler Flower 2.0 ships for it
FLOWER_OAUTH_PROVIDERS: Final = {
    "github": "flower.views.auth.GithubLoginHandler",
    "google": "flower.views.auth.GoogleAuth2LoginHandler",
    "gitlab": "flower.views.auth.GitLabLoginHandler",
    "okta": "flower.views.auth.OktaLoginHandler",
}


# spec.flower.allowFrom when omitted: every pod of the TaskQueue's namespace
FLOWER_DEFAULT_ALLOW_FROM: Final[tuple[Mapping[str, Any], ...]] = ({"podSelector": {}},)


@dataclass(frozen=True)
class NetworkPolicySpec:
    """`spec.networkPolicy`: whether the operator makes the TaskQueue's NetworkPolicies."""

    enabled: bool = True


@dataclass(frozen=True)
class FlowerOAuth:
    """`flower.oauth`: Flower's own OAuth2 login (the client secret only from a Secret)."""

    provider: str  # a key of FLOWER_OAUTH_PROVIDERS
    allowed_emails: str  # Flower's --auth: a regular expression the logged-in email must match
    client_id: str
    client_secret_ref: SecretKeyRef
    redirect_uri: str


@dataclass(frozen=True)
class FlowerSpec:
    """auth: basic (basic_auth_secret_ref, or a password the operator generates), oauth, or none."""

    enabled: bool = False
    image: str | None = None  # None: the operator's setting CELERY_OPERATOR_FLOWER_IMAGE
    resources: Mapping[str, Any] = field(default_factory=dict)  # {} = the builder's defaults
    auth: str = "basic"
    basic_auth_secret_ref: SecretKeyRef | None = None
    oauth: FlowerOAuth | None = None
    env: tuple[Mapping[str, Any], ...] = ()
    extra_args: tuple[str, ...] = ()
    # NetworkPolicyPeers that may connect to Flower's port; () = nobody (kubectl port-forward still works)
    allow_from: tuple[Mapping[str, Any], ...] = FLOWER_DEFAULT_ALLOW_FROM

    @property
    def generated_password(self) -> bool:
        """Basic auth with a password the operator generates into the Secret `<tq>-flower`."""
        return self.enabled and self.auth == "basic" and self.basic_auth_secret_ref is None


@dataclass(frozen=True)
class TaskQueueSpec:
    image: str
    app: str
    queues: tuple[QueueSpec, ...]
    image_pull_policy: str | None = None
    image_pull_secrets: tuple[Mapping[str, Any], ...] = ()
    service_account_name: str | None = None
    env: tuple[Mapping[str, Any], ...] = ()
    env_from: tuple[Mapping[str, Any], ...] = ()
    pod: PodOverrides = PodOverrides()
    broker: BrokerSpec = BrokerSpec(kind="managed", managed=ManagedBroker())
    result_backend: ResultBackendSpec | None = None
    workers: WorkerSettings = WorkerSettings()
    autoscaling: AutoscalingBehavior = AutoscalingBehavior()
    beat: BeatSpec = BeatSpec()
    flower: FlowerSpec = FlowerSpec()
    network_policy: NetworkPolicySpec = NetworkPolicySpec()

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> TaskQueueSpec:
        return parse_taskqueue_spec(spec)

    def queue(self, name: str) -> QueueSpec:
        for queue in self.queues:
            if queue.name == name:
                return queue
        raise KeyError(name)

    @property
    def autoscaled_queues(self) -> tuple[QueueSpec, ...]:
        return tuple(q for q in self.queues if q.autoscaled)


@dataclass(frozen=True)
class PeriodicJobSpec:
    task_queue_name: str
    task: str
    schedule: str | None = None
    interval: str | None = None
    time_zone: str = DEFAULT_TIME_ZONE
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    queue: str | None = None
    suspend: bool = False
    expires_seconds: int = 0

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> PeriodicJobSpec:
        return parse_periodicjob_spec(spec)

    @property
    def interval_seconds(self) -> float | None:
        return None if self.interval is None else parse_go_duration(self.interval, "spec.interval")


# --- parsing ------------------------------------------------------------------------------------


def parse_taskqueue_spec(spec: Mapping[str, Any] | None) -> TaskQueueSpec:
    """Parse a TaskQueue's `spec` (defaults applied or not). Raises SpecError."""
    spec = _mapping(spec, "spec")
    workers = _parse_worker_settings(_mapping(spec.get("workers"), "spec.workers"), "spec.workers")
    return TaskQueueSpec(
        image=_required_string(spec, "image", "spec"),
        app=_required_string(spec, "app", "spec"),
        queues=_parse_queues(spec.get("queues"), workers),
        image_pull_policy=_optional_enum(spec, "imagePullPolicy", "spec", IMAGE_PULL_POLICIES),
        image_pull_secrets=_list_of_objects(spec, "imagePullSecrets", "spec"),
        service_account_name=_optional_string(spec, "serviceAccountName", "spec") or None,
        env=_parse_env(spec),
        env_from=_list_of_objects(spec, "envFrom", "spec"),
        pod=_parse_pod(_mapping(spec.get("pod"), "spec.pod")),
        broker=_parse_broker(_mapping(spec.get("broker"), "spec.broker")),
        result_backend=_parse_result_backend(spec.get("resultBackend")),
        workers=workers,
        autoscaling=_parse_autoscaling_behavior(_mapping(spec.get("autoscaling"), "spec.autoscaling")),
        beat=_parse_beat(_mapping(spec.get("beat"), "spec.beat")),
        flower=_parse_flower(_mapping(spec.get("flower"), "spec.flower")),
        network_policy=NetworkPolicySpec(
            enabled=_bool(_mapping(spec.get("networkPolicy"), "spec.networkPolicy"), "enabled",
                          "spec.networkPolicy", True)),
    )


def validate_taskqueue_name(name: str) -> None:
    """The TaskQueue's own name must leave room for every child name (and name Services)."""
    if len(name) > naming.MAX_TASKQUEUE_NAME_LENGTH:
        raise SpecError(
            "metadata.name",
            f"must be at most {naming.MAX_TASKQUEUE_NAME_LENGTH} characters so every child name fits",
        )
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name):
        raise SpecError(
            "metadata.name",
            "must be a DNS label (lower-case letters, digits and '-', starting with a letter): it names Services",
        )


def parse_periodicjob_spec(spec: Mapping[str, Any] | None) -> PeriodicJobSpec:
    """Parse a PeriodicJob's `spec`. Raises SpecError."""
    spec = _mapping(spec, "spec")
    ref = _mapping(spec.get("taskQueueRef"), "spec.taskQueueRef")
    schedule = _optional_string(spec, "schedule", "spec")
    interval = _optional_string(spec, "interval", "spec")
    if (schedule is None) == (interval is None):
        raise SpecError("spec", "set exactly one of spec.schedule and spec.interval")
    if schedule is not None and not _CRON_SCHEDULE.fullmatch(schedule):
        raise SpecError(
            "spec.schedule",
            "must be a 5-field cron expression (minute hour day-of-month month day-of-week) "
            "or one of " + ", ".join(CRON_MACROS),
        )
    if interval is not None and parse_go_duration(interval, "spec.interval") < 1:
        raise SpecError("spec.interval", "must be at least 1s")
    args = spec.get("args")
    if args is None:
        args = []
    if not isinstance(args, list):
        raise SpecError("spec.args", "must be a list")
    kwargs = _mapping(spec.get("kwargs"), "spec.kwargs")
    queue = _optional_string(spec, "queue", "spec") or None
    if queue is not None:
        _validate_queue_name(queue, "spec.queue")
    return PeriodicJobSpec(
        task_queue_name=_required_string(ref, "name", "spec.taskQueueRef"),
        task=_required_string(spec, "task", "spec"),
        schedule=schedule,
        interval=interval,
        time_zone=_optional_string(spec, "timeZone", "spec") or DEFAULT_TIME_ZONE,
        args=tuple(copy.deepcopy(args)),
        kwargs=copy.deepcopy(dict(kwargs)),
        queue=queue,
        suspend=_bool(spec, "suspend", "spec", False),
        expires_seconds=_int(spec, "expiresSeconds", "spec", 0, minimum=0),
    )


def parse_go_duration(text: str, field_path: str = "duration") -> float:
    """Seconds in a Go-style duration such as `30s`, `5m`, `1h30m`, `1.5h`."""
    if not _GO_DURATION.fullmatch(text):
        raise SpecError(field_path, f"{text!r} is not a duration such as 30s, 5m or 1h30m")
    return sum(
        float(number) * _GO_DURATION_UNIT_SECONDS[unit] for number, unit in _GO_DURATION_PART.findall(text)
    )


def _parse_worker_settings(
    values: Mapping[str, Any], path: str, inherited: WorkerSettings | None = None
) -> WorkerSettings:
    """`spec.workers`, or a queue's overrides over `inherited` when given."""
    base = inherited or WorkerSettings()
    extra_args = values.get("extraArgs")
    if extra_args is None:
        parsed_extra_args = base.extra_args
    else:
        if not isinstance(extra_args, list) or not all(isinstance(a, str) for a in extra_args):
            raise SpecError(f"{path}.extraArgs", "must be a list of strings")
        parsed_extra_args = tuple(extra_args)
    return WorkerSettings(
        concurrency=_int(values, "concurrency", path, base.concurrency, minimum=1),
        pool=_optional_enum(values, "pool", path, POOLS) or base.pool,
        prefetch_multiplier=_int(values, "prefetchMultiplier", path, base.prefetch_multiplier, minimum=1),
        max_tasks_per_child=_int(values, "maxTasksPerChild", path, base.max_tasks_per_child, minimum=0),
        termination_grace_period_seconds=_int(
            values, "terminationGracePeriodSeconds", path, base.termination_grace_period_seconds, minimum=0
        ),
        resources=_object(values, "resources", path) if values.get("resources") is not None else base.resources,
        extra_args=parsed_extra_args,
        mingle=_bool(values, "mingle", path, base.mingle),
        gossip=_bool(values, "gossip", path, base.gossip),
        health=_parse_worker_health(values, path, base.health),
    )


def _stuck_threshold(values: Mapping[str, Any], key: str, path: str, default: int) -> int:
    seconds = _int(values, key, path, default, minimum=0, maximum=86400)
    if 0 < seconds < MIN_STUCK_THRESHOLD_SECONDS:
        raise SpecError(f"{path}.{key}", f"must be 0 (never) or at least {MIN_STUCK_THRESHOLD_SECONDS} "
                                         f"(got {seconds})")
    return seconds


def _parse_worker_health(values: Mapping[str, Any], path: str, inherited: WorkerHealth) -> WorkerHealth:
    """`workers.health`; a queue's fields override spec.workers.health one by one."""
    if values.get("health") is None:
        return inherited
    path = f"{path}.health"
    health = _mapping(values["health"], path)
    return WorkerHealth(
        action=_optional_enum(health, "action", path, HEALTH_ACTIONS) or inherited.action,
        heartbeat_timeout_seconds=_stuck_threshold(health, "heartbeatTimeoutSeconds", path,
                                                   inherited.heartbeat_timeout_seconds),
        idle_with_backlog_seconds=_stuck_threshold(health, "idleWithBacklogSeconds", path,
                                                   inherited.idle_with_backlog_seconds),
    )


def _parse_queues(raw: Any, workers: WorkerSettings) -> tuple[QueueSpec, ...]:
    if raw is None:
        raise SpecError("spec.queues", "is required: list at least one Celery queue")
    if not isinstance(raw, list):
        raise SpecError("spec.queues", "must be a list")
    if not 1 <= len(raw) <= MAX_QUEUES:
        raise SpecError("spec.queues", f"must have between 1 and {MAX_QUEUES} entries")
    queues = tuple(
        _parse_queue(_mapping(item, f"spec.queues[{i}]"), f"spec.queues[{i}]", workers) for i, item in enumerate(raw)
    )
    seen: dict[str, str] = {}
    for i, queue in enumerate(queues):
        if queue.dns_name in seen:
            other = seen[queue.dns_name]
            reason = "is a duplicate" if other == queue.name else (
                f"collides with {other!r} once made DNS-safe (both become {queue.dns_name!r})"
            )
            raise SpecError(f"spec.queues[{i}].name", f"{queue.name!r} {reason}")
        seen[queue.dns_name] = queue.name
    return queues


def _parse_queue(values: Mapping[str, Any], path: str, workers: WorkerSettings) -> QueueSpec:
    name = _required_string(values, "name", path)
    _validate_queue_name(name, f"{path}.name")
    effective = _parse_worker_settings(values, path, inherited=workers)
    autoscaling = None
    if values.get("autoscaling") is not None:
        autoscaling = _parse_queue_autoscaling(
            _mapping(values["autoscaling"], f"{path}.autoscaling"), f"{path}.autoscaling", effective
        )
    return QueueSpec(
        name=name,
        replicas=_int(values, "replicas", path, DEFAULT_REPLICAS, minimum=0),
        autoscaling=autoscaling,
        workers=effective,
    )


def _parse_queue_autoscaling(values: Mapping[str, Any], path: str, workers: WorkerSettings) -> QueueAutoscaling:
    if values.get("maxReplicas") is None:
        raise SpecError(f"{path}.maxReplicas", "is required")
    max_replicas = _int(values, "maxReplicas", path, 0, minimum=1)
    min_replicas = _int(values, "minReplicas", path, DEFAULT_MIN_REPLICAS, minimum=0)
    if min_replicas > max_replicas:
        raise SpecError(f"{path}.maxReplicas", f"must be >= minReplicas ({max_replicas} < {min_replicas})")
    return QueueAutoscaling(
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        target_tasks_per_replica=_int(values, "targetTasksPerReplica", path, workers.concurrency, minimum=1),
    )


def _validate_queue_name(name: str, path: str) -> None:
    if not naming.QUEUE_NAME_PATTERN.fullmatch(name):
        raise SpecError(
            path,
            f"{name!r} must be 1..{naming.MAX_QUEUE_NAME_LENGTH} characters of letters, digits, "
            "'_', '.', ':' and '-', starting and ending with a letter or digit",
        )


def _parse_persistence(value: Any) -> Persistence | None:
    """broker.managed.persistence: omitted = the durable default; `enabled: false` = None (an emptyDir)."""
    where = "spec.broker.managed.persistence"
    raw = _mapping(value, where)
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SpecError(f"{where}.enabled", "must be true or false")
    if not enabled:
        return None
    size = raw.get("size", DEFAULT_BROKER_VOLUME_SIZE)
    if isinstance(size, int) and not isinstance(size, bool):
        size = str(size)  # a quantity may be written as a bare number of bytes
    if not isinstance(size, str) or not size:
        raise SpecError(f"{where}.size", "must be a quantity such as 1Gi")
    access_mode = _optional_string(raw, "accessMode", where) or "ReadWriteOncePod"
    if access_mode not in CLAIM_ACCESS_MODES:
        raise SpecError(f"{where}.accessMode", f"must be one of {', '.join(CLAIM_ACCESS_MODES)}")
    return Persistence(size=size, storage_class_name=_optional_string(raw, "storageClassName", where) or "",
                       access_mode=access_mode)


def _parse_broker(values: Mapping[str, Any]) -> BrokerSpec:
    present = [key for key in ("managed", "url", "urlSecretRef") if values.get(key) is not None]
    if len(present) > 1:
        raise SpecError("spec.broker", f"set at most one of managed, url and urlSecretRef (found {', '.join(present)})")
    if "url" in present:
        url = _required_string(values, "url", "spec.broker")
        _validate_url(url, "spec.broker.url", schemes=BROKER_URL_SCHEMES)
        return BrokerSpec(kind="url", url=url)
    if "urlSecretRef" in present:
        reference = _secret_key_ref(values["urlSecretRef"], "spec.broker.urlSecretRef")
        return BrokerSpec(kind="secretRef", url_secret_ref=reference)
    managed = _mapping(values.get("managed"), "spec.broker.managed")
    persistence = _parse_persistence(managed.get("persistence"))
    resources = _object(managed, "resources", "spec.broker.managed")
    max_memory = _optional_quantity(managed, "maxMemory", "spec.broker.managed")
    limit = (resources.get("limits") or {}).get("memory") if isinstance(resources.get("limits"), Mapping) else None
    if max_memory is not None and limit is not None and parse_quantity(max_memory) >= _quantity_or(limit, INF):
        raise SpecError("spec.broker.managed.maxMemory", f"must be below resources.limits.memory ({limit}), "
                                                          "or the kernel kills Redis before it refuses writes")
    return BrokerSpec(
        kind="managed",
        managed=ManagedBroker(
            image=_optional_string(managed, "image", "spec.broker.managed") or None,
            resources=resources,
            persistence=persistence,
            max_memory=max_memory,
        ),
    )


INF: Final = float("inf")


def _quantity_or(value: Any, fallback: float) -> Any:
    """The parsed quantity, or `fallback` for what is not one (the API server rejects it anyway)."""
    try:
        return parse_quantity(value)
    except ValueError:
        return fallback


def _optional_quantity(values: Mapping[str, Any], key: str, path: str) -> str | None:
    value = values.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise SpecError(f"{path}.{key}", "must be a quantity such as 200Mi")
    try:
        amount = parse_quantity(value)
    except ValueError as error:
        raise SpecError(f"{path}.{key}", f"must be a quantity such as 200Mi (got {value!r})") from error
    if amount <= 0:
        raise SpecError(f"{path}.{key}", "must be more than 0")
    return str(value)


def _parse_result_backend(raw: Any) -> ResultBackendSpec | None:
    if raw is None:
        return None
    values = _mapping(raw, "spec.resultBackend")
    has_url = values.get("url") is not None
    has_ref = values.get("urlSecretRef") is not None
    if has_url == has_ref:
        raise SpecError("spec.resultBackend", "set exactly one of url and urlSecretRef")
    if has_url:
        url = _required_string(values, "url", "spec.resultBackend")
        _validate_url(url, "spec.resultBackend.url", schemes=None)
        return ResultBackendSpec(url=url)
    return ResultBackendSpec(url_secret_ref=_secret_key_ref(values["urlSecretRef"], "spec.resultBackend.urlSecretRef"))


def _validate_url(url: str, path: str, schemes: Sequence[str] | None) -> None:
    scheme = _URL_SCHEME.match(url)
    if scheme is None:
        raise SpecError(path, "must be a URL of the form scheme://host...")
    if schemes is not None and scheme.group(1) not in schemes:
        raise SpecError(path, f"scheme must be one of {', '.join(schemes)} (got {scheme.group(1)!r})")
    if _URL_WITH_PASSWORD.match(url):
        # Never echo the URL itself: it holds a password.
        raise SpecError(path, "must not contain a password: put the URL in a Secret and use urlSecretRef")


def _secret_key_ref(raw: Any, path: str) -> SecretKeyRef:
    values = _mapping(raw, path)
    return SecretKeyRef(name=_required_string(values, "name", path), key=_required_string(values, "key", path))


def _parse_pod(values: Mapping[str, Any]) -> PodOverrides:
    security_context = values.get("securityContext")
    return PodOverrides(
        annotations=_string_map(values, "annotations", "spec.pod"),
        labels=_string_map(values, "labels", "spec.pod"),
        node_selector=_string_map(values, "nodeSelector", "spec.pod"),
        tolerations=_list_of_objects(values, "tolerations", "spec.pod"),
        affinity=_object(values, "affinity", "spec.pod"),
        priority_class_name=_optional_string(values, "priorityClassName", "spec.pod") or "",
        security_context=None if security_context is None else _object(values, "securityContext", "spec.pod"),
    )


def _parse_env(spec: Mapping[str, Any]) -> tuple[Mapping[str, Any], ...]:
    env = _list_of_objects(spec, "env", "spec")
    seen: set[str] = set()
    for i, item in enumerate(env):
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise SpecError(f"spec.env[{i}].name", "is required")
        if name in seen:
            raise SpecError(f"spec.env[{i}].name", f"{name!r} is a duplicate")
        seen.add(name)
    return env


def _parse_autoscaling_behavior(values: Mapping[str, Any]) -> AutoscalingBehavior:
    low, high = POLL_INTERVAL_RANGE
    stab_low, stab_high = SCALE_DOWN_STABILIZATION_RANGE
    return AutoscalingBehavior(
        poll_interval_seconds=_int(
            values, "pollIntervalSeconds", "spec.autoscaling", DEFAULT_POLL_INTERVAL_SECONDS, minimum=low, maximum=high
        ),
        scale_down_stabilization_seconds=_int(
            values, "scaleDownStabilizationSeconds", "spec.autoscaling", DEFAULT_SCALE_DOWN_STABILIZATION_SECONDS,
            minimum=stab_low, maximum=stab_high,
        ),
    )


def _parse_beat(values: Mapping[str, Any]) -> BeatSpec:
    return BeatSpec(
        scheduler=_optional_string(values, "scheduler", "spec.beat") or "",
        resources=_object(values, "resources", "spec.beat"),
    )


def _parse_flower(values: Mapping[str, Any]) -> FlowerSpec:
    path = "spec.flower"
    oauth = None if values.get("oauth") is None else _parse_flower_oauth(_mapping(values["oauth"], f"{path}.oauth"))
    auth = _optional_enum(values, "auth", path, FLOWER_AUTH_MODES) or ("oauth" if oauth else "basic")
    reference = (None if values.get("basicAuthSecretRef") is None
                 else _secret_key_ref(values["basicAuthSecretRef"], f"{path}.basicAuthSecretRef"))
    if auth == "oauth" and oauth is None:
        raise SpecError(f"{path}.oauth", "is required when spec.flower.auth is oauth")
    if oauth is not None and auth != "oauth":
        raise SpecError(f"{path}.oauth", f"is only used with spec.flower.auth oauth (auth is {auth})")
    if reference is not None and auth != "basic":
        raise SpecError(f"{path}.basicAuthSecretRef", f"is only used with spec.flower.auth basic (auth is {auth})")
    extra_args = values.get("extraArgs") or []
    if not isinstance(extra_args, list) or not all(isinstance(a, str) for a in extra_args):
        raise SpecError(f"{path}.extraArgs", "must be a list of strings")
    return FlowerSpec(
        enabled=_bool(values, "enabled", path, False),
        image=_optional_string(values, "image", path) or None,
        resources=_object(values, "resources", path),
        auth=auth,
        basic_auth_secret_ref=reference,
        oauth=oauth,
        env=_list_of_objects(values, "env", path),
        extra_args=tuple(extra_args),
        allow_from=(FLOWER_DEFAULT_ALLOW_FROM if values.get("allowFrom") is None
                    else _list_of_objects(values, "allowFrom", path)),
    )


def _parse_flower_oauth(values: Mapping[str, Any]) -> FlowerOAuth:
    path = "spec.flower.oauth"
    provider = _optional_enum(values, "provider", path, tuple(FLOWER_OAUTH_PROVIDERS))
    if provider is None:
        raise SpecError(f"{path}.provider", f"is required: one of {', '.join(FLOWER_OAUTH_PROVIDERS)}")
    return FlowerOAuth(
        provider=provider,
        allowed_emails=_required_string(values, "allowedEmails", path),
        client_id=_required_string(values, "clientId", path),
        client_secret_ref=_secret_key_ref(values.get("clientSecretRef"), f"{path}.clientSecretRef"),
        redirect_uri=_required_string(values, "redirectUri", path),
    )


# --- typed field access ---------------------------------------------------------------------------


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(path, "must be an object")
    return value


def _object(values: Mapping[str, Any], key: str, path: str) -> dict[str, Any]:
    return copy.deepcopy(dict(_mapping(values.get(key), f"{path}.{key}")))


def _string_map(values: Mapping[str, Any], key: str, path: str) -> dict[str, str]:
    result = _object(values, key, path)
    for name, value in result.items():
        if not isinstance(value, str):
            raise SpecError(f"{path}.{key}.{name}", "must be a string")
    return result


def _list_of_objects(values: Mapping[str, Any], key: str, path: str) -> tuple[dict[str, Any], ...]:
    raw = values.get(key)
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(f"{path}.{key}", "must be a list")
    for i, item in enumerate(raw):
        if not isinstance(item, Mapping):
            raise SpecError(f"{path}.{key}[{i}]", "must be an object")
    return tuple(copy.deepcopy(dict(item)) for item in raw)


def _optional_string(values: Mapping[str, Any], key: str, path: str) -> str | None:
    value = values.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SpecError(f"{path}.{key}", "must be a string")
    return value


def _required_string(values: Mapping[str, Any], key: str, path: str) -> str:
    value = _optional_string(values, key, path)
    if not value:
        raise SpecError(f"{path}.{key}", "is required")
    return value


def _optional_enum(values: Mapping[str, Any], key: str, path: str, allowed: Sequence[str]) -> str | None:
    value = _optional_string(values, key, path)
    if value is not None and value not in allowed:
        raise SpecError(f"{path}.{key}", f"must be one of {', '.join(allowed)} (got {value!r})")
    return value


def _int(
    values: Mapping[str, Any], key: str, path: str, default: int,
    minimum: int | None = None, maximum: int | None = None,
) -> int:
    value = values.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path}.{key}", "must be an integer")
    if minimum is not None and value < minimum:
        raise SpecError(f"{path}.{key}", f"must be >= {minimum} (got {value})")
    if maximum is not None and value > maximum:
        raise SpecError(f"{path}.{key}", f"must be <= {maximum} (got {value})")
    return value


def _bool(values: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = values.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise SpecError(f"{path}.{key}", "must be true or false")
    return value
