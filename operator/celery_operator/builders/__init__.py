"""Pure builders: parsed spec -> manifest dicts ready for server-side apply.

`desired_children` is the whole picture for one TaskQueue: the reconciler applies these and deletes
owned children that are no longer in the list (e.g. a removed queue's Deployment, or the beat once
no PeriodicJob refers to the TaskQueue). Whether a beat is wanted depends on the PeriodicJobs,
which the reconciler knows: it passes `beat` options, or None for no beat.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..models import ObjectIdentity, TaskQueueSpec
from .beat import BeatOptions, beat_state_url, build_beat
from .broker import build_managed_broker
from .common import DefaultImages, Manifest
from .flower import build_flower
from .networkpolicy import OperatorSource, build_network_policies
from .secret import broker_url, build_broker_secret
from .worker import build_worker_deployments


def desired_children(
    owner: ObjectIdentity,
    spec: TaskQueueSpec,
    *,
    images: DefaultImages,
    broker_password: str | None = None,
    external_broker_url: str | None = None,
    beat: BeatOptions | None = None,
    flower_password: str | None = None,
    operator_source: OperatorSource = OperatorSource(),
    broker_claim: Mapping[str, Any] | None = None,
) -> list[Manifest]:
    """Every child the TaskQueue should have now, in a sensible apply order (Secret first).

    `broker_password` is required for a managed broker, `external_broker_url` for a urlSecretRef
    broker (the value read from the user's Secret); see `build_broker_secret`. `flower_password`
    is required when Flower's login is generated (`spec.flower.generated_password`).
    `operator_source` is where the operator connects from, for the NetworkPolicies of its Redis.
    `broker_claim` is the managed broker's live volume claim, whose immutable access modes stay.
    """
    children = [
        build_broker_secret(owner, spec.broker, password=broker_password, external_url=external_broker_url)
    ]
    # the policies before the pods they guard, so that no pod of the TaskQueue starts open
    children += build_network_policies(
        owner, spec, operator_source, beat=beat is not None,
        beat_state=beat is not None and not beat.custom and beat.state == "managed")
    if spec.broker.managed is not None:
        children += build_managed_broker(owner, spec.broker.managed, images.redis, existing_claim=broker_claim)
    children += build_worker_deployments(owner, spec)
    children += build_flower(owner, spec, images.flower, password=flower_password)
    children += build_beat(owner, spec, beat, images)
    return children


__all__ = ["BeatOptions", "DefaultImages", "Manifest", "OperatorSource", "beat_state_url", "broker_url",
           "desired_children"]
