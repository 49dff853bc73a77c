"""The operator's settings, read from CELERY_OPERATOR_* environment variables. Nothing else."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final

from . import naming
from .leadership import Terms

ENV_PREFIX: Final = "CELERY_OPERATOR_"


@dataclass(frozen=True)
class Settings:
    """Every knob, with its environment variable: CELERY_OPERATOR_<FIELD NAME IN UPPER CASE>."""

    # how often each TaskQueue and PeriodicJob is reconciled with nothing changed (drift, readiness,
    # broker health); a failed pass is retried after the same period
    resync_seconds: float = 10.0
    # the longest a single broker or API request may take
    broker_timeout_seconds: float = 2.0
    api_timeout_seconds: float = 10.0
    # server-side apply field managers: the reconciler's and the scaler's (replicas of autoscaled workers)
    field_manager: str = naming.FIELD_MANAGER
    scaler_field_manager: str = f"{naming.FIELD_MANAGER}-scaler"
    # the images the operator runs when a TaskQueue names none: every beat pod (`python -m
    # celery_operator.beat`, the operator's own image), the managed Redis (and the beat-state
    # Redis of AMQP brokers), Flower; a TaskQueue's spec.broker.managed.image and spec.flower.image win
    beat_image: str = f"ghcr.io/celery-operator/celery-operator:{naming.OPERATOR_VERSION}"
    redis_image: str = "redis:7.4-alpine"
    flower_image: str = "mher/flower:2.0"
    # the Prometheus /metrics port (0 = off) and the address it listens on
    metrics_port: int = 0
    metrics_address: str = "0.0.0.0"
    log_level: str = "INFO"
    # leader election among replicas (leadership.py, election.py): the Lease's name ("" = no election:
    # this process acts at once, the one replica) and namespace, this replica's identity in it (the
    # chart: the pod's name), and its terms in seconds
    leader_election_lease: str = ""
    leader_election_namespace: str = ""
    leader_election_identity: str = ""
    leader_election_lease_duration_seconds: float = 15.0
    leader_election_renew_deadline_seconds: float = 10.0
    leader_election_retry_period_seconds: float = 2.0
    # where the operator connects to the TaskQueues' Redis from, which their NetworkPolicies let in:
    # its own pod (namespace and labels as `k=v,k=v`: the chart passes both), or, for an operator
    # outside the cluster, the CIDRs its connections come from (`10.0.0.0/24,192.168.1.5/32`)
    pod_namespace: str = ""
    pod_labels: str = ""
    source_cidrs: str = ""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in fields(cls):
            raw = environ.get(ENV_PREFIX + item.name.upper())
            if raw is None or raw == "":
                continue
            values[item.name] = _convert(item.name, raw, type(getattr(cls, item.name)))
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("resync_seconds", "broker_timeout_seconds", "api_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{ENV_PREFIX}{name.upper()} must be > 0")
        if self.leader_election_lease:
            if not (self.leader_election_namespace and self.leader_election_identity):
                raise ValueError(f"{ENV_PREFIX}LEADER_ELECTION_LEASE needs {ENV_PREFIX}LEADER_ELECTION_NAMESPACE "
                                 f"and {ENV_PREFIX}LEADER_ELECTION_IDENTITY (the pod's namespace and name)")
            for problem in self.leader_election_terms().problems():
                raise ValueError(f"{ENV_PREFIX}LEADER_ELECTION_*_SECONDS: {problem}")
        self.pod_label_map()
        self.source_cidr_list()

    def pod_label_map(self) -> dict[str, str]:
        labels = {}
        for item in filter(None, (part.strip() for part in self.pod_labels.split(","))):
            key, equals, value = item.partition("=")
            if not equals or not key.strip():
                raise ValueError(f"{ENV_PREFIX}POD_LABELS: {item!r} is not key=value")
            labels[key.strip()] = value.strip()
        return labels

    def source_cidr_list(self) -> tuple[str, ...]:
        cidrs = []
        for item in filter(None, (part.strip() for part in self.source_cidrs.split(","))):
            try:
                cidrs.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError:
                raise ValueError(f"{ENV_PREFIX}SOURCE_CIDRS: {item!r} is not a CIDR") from None
        return tuple(cidrs)

    def leader_election_terms(self) -> Terms:
        return Terms(lease_duration=self.leader_election_lease_duration_seconds,
                     renew_deadline=self.leader_election_renew_deadline_seconds,
                     retry_period=self.leader_election_retry_period_seconds)


def _convert(name: str, raw: str, kind: type) -> Any:
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}") from None
