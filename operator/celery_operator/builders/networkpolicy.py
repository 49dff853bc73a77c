"""The TaskQueue's NetworkPolicies (spec.networkPolicy.enabled, on by default). Pure.

Each one selects some of the TaskQueue's pods and lists who may connect to them.

- `<tq>-broker` (managed broker): Redis's port, from this TaskQueue's pods, from producers (pods of
  the namespace labelled `celery-operator.dev/producer: <tq>`, e.g. a web app that sends tasks),
  and from the operator.
- `<tq>-beat-state` (the schedule-state Redis of an AMQP broker): its port, from this TaskQueue's
  pods and from the operator.
- `<tq>-flower` (Flower enabled): Flower's port, from spec.flower.allowFrom.
- `<tq>-workers` and `<tq>-beat`: nothing; workers and the beat only connect out. The kubelet's
  probes come from the pod's own node, which policy engines let through.

Egress is left open for workers, beat and Flower: workers call whatever services their tasks
need, and beat and Flower reach a broker that may be outside the cluster, by a name no policy can
hold. The operator's Redis instances (broker, beat state) never connect out: they deny egress.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .. import naming
from ..models import ObjectIdentity, TaskQueueSpec
from .common import Manifest, object_meta

API_VERSION: Final = "networking.k8s.io/v1"
# the label of the pods in `kubernetes.io/metadata.name`: every namespace carries its own name
NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class OperatorSource:
    """Where the operator's connections to the TaskQueue's Redis come from (its settings).

    In a cluster: its own pod, by namespace and labels (the chart passes both). Outside one
    (a developer's machine, the tests): the addresses it connects from, as CIDRs.
    """

    namespace: str = ""  # "" = the TaskQueue's namespace
    pod_labels: Mapping[str, str] = field(default_factory=dict)  # {} = no pod of the operator
    cidrs: tuple[str, ...] = ()

    def peers(self) -> list[dict[str, Any]]:
        peers: list[dict[str, Any]] = []
        if self.pod_labels:
            peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(self.pod_labels)}}
            if self.namespace:
                peer["namespaceSelector"] = {"matchLabels": {NAMESPACE_NAME_LABEL: self.namespace}}
            peers.append(peer)
        peers += [{"ipBlock": {"cidr": cidr}} for cidr in self.cidrs]
        return peers


def taskqueue_pods(taskqueue: str) -> dict[str, Any]:
    """Every pod of this TaskQueue (workers, beat, Flower) in its namespace."""
    return {"podSelector": {"matchLabels": {naming.LABEL_NAME: naming.APP_NAME, naming.LABEL_INSTANCE: taskqueue}}}


def producer_pods(taskqueue: str) -> dict[str, Any]:
    return {"podSelector": {"matchLabels": {naming.LABEL_PRODUCER: taskqueue}}}


def network_policy(owner: ObjectIdentity, *, name: str, component: naming.Component, pods: Mapping[str, str],
                   sources: Sequence[Mapping[str, Any]] | None = None, port: int | None = None,
                   beat_role: str | None = None, deny_egress: bool = False) -> Manifest:
    """A policy over the pods `pods` selects: ingress from `sources` to `port`, or none at all
    when `sources` is None or empty (an empty `from` would mean everyone; no rule means no one);
    with `deny_egress`, no connection out either (replies to accepted connections still flow)."""
    policy_types = ["Ingress", "Egress"] if deny_egress else ["Ingress"]
    spec: dict[str, Any] = {"podSelector": {"matchLabels": dict(pods)}, "policyTypes": policy_types}
    if sources:
        spec["ingress"] = [{"from": [copy.deepcopy(dict(s)) for s in sources],
                            "ports": [{"protocol": "TCP", "port": port}]}]
    return {
        "apiVersion": API_VERSION,
        "kind": "NetworkPolicy",
        "metadata": object_meta(owner, name, component, beat_role=beat_role),
        "spec": spec,
    }


def build_network_policies(owner: ObjectIdentity, spec: TaskQueueSpec, operator: OperatorSource, *,
                           beat: bool, beat_state: bool) -> list[Manifest]:
    """The TaskQueue's policies; `beat` and `beat_state` say whether the beat and its state
    Redis exist. None at all when spec.networkPolicy.enabled is false."""
    if not spec.network_policy.enabled:
        return []
    tq = owner.name
    policies = []
    if spec.broker.managed is not None:
        policies.append(network_policy(
            owner, name=naming.broker_name(tq), component=naming.BROKER,
            pods=naming.selector_labels(tq, naming.BROKER), port=naming.REDIS_PORT,
            sources=[taskqueue_pods(tq), producer_pods(tq), *operator.peers()], deny_egress=True))
    policies.append(network_policy(owner, name=naming.workers_policy_name(tq), component=naming.WORKER,
                                   pods=naming.selector_labels(tq, naming.WORKER)))
    if beat:
        policies.append(network_policy(
            owner, name=naming.beat_name(tq), component=naming.BEAT, beat_role=naming.BEAT_ROLE_SCHEDULER,
            pods=naming.selector_labels(tq, naming.BEAT, beat_role=naming.BEAT_ROLE_SCHEDULER)))
    if beat_state:
        policies.append(network_policy(
            owner, name=naming.beat_state_name(tq), component=naming.BEAT, beat_role=naming.BEAT_ROLE_STATE,
            pods=naming.selector_labels(tq, naming.BEAT, beat_role=naming.BEAT_ROLE_STATE), port=naming.REDIS_PORT,
            sources=[taskqueue_pods(tq), *operator.peers()], deny_egress=True))
    if spec.flower.enabled:
        policies.append(network_policy(
            owner, name=naming.flower_name(tq), component=naming.FLOWER,
            pods=naming.selector_labels(tq, naming.FLOWER), port=naming.FLOWER_PORT, sources=spec.flower.allow_from))
    return policies
