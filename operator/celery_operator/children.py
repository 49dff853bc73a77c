"""A TaskQueue's children as observed (the handlers' indexes, or the API): looked up by name, and
what they tell: the URLs in our Secrets, whether a Deployment has rolled out. Pure."""

from __future__ import annotations

import base64
import datetime
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from . import naming

Manifest = dict[str, Any]
ChildKey = tuple[str, str, str]  # (apiVersion, kind, name); the namespace is the owner's


def child_key(manifest: Mapping[str, Any]) -> ChildKey:
    return (manifest["apiVersion"], manifest["kind"], manifest["metadata"]["name"])


def deployment_key(name: str) -> ChildKey:
    return ("apps/v1", "Deployment", name)


def secret_key(name: str) -> ChildKey:
    return ("v1", "Secret", name)


def decode_secret_value(secret: Mapping[str, Any], key: str) -> str | None:
    """A value of a Secret read from the API (base64 `data`), or None when the key is absent."""
    encoded = (secret.get("data") or {}).get(key)
    return None if encoded is None else base64.b64decode(encoded).decode()


def controller_uid(item: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller (its controlling ownerReference), if any."""
    for reference in item.get("metadata", {}).get("ownerReferences") or []:
        if reference.get("controller"):
            return reference.get("uid")
    return None


class Children(Mapping[ChildKey, Manifest]):
    """Observed children by key."""

    def __init__(self, items: Iterable[Mapping[str, Any]] | Mapping[ChildKey, Manifest] = ()):
        if isinstance(items, Mapping):
            self._by_key: dict[ChildKey, Manifest] = dict(items)
        else:
            self._by_key = {child_key(item): dict(item) for item in items}

    def __getitem__(self, key: ChildKey) -> Manifest:
        return self._by_key[key]

    def __iter__(self) -> Iterator[ChildKey]:
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)

    def with_child(self, item: Mapping[str, Any]) -> Children:
        return Children({**self._by_key, child_key(item): dict(item)})

    def deployment(self, name: str) -> Manifest | None:
        return self._by_key.get(deployment_key(name))

    def claim(self, name: str) -> Manifest | None:
        return self._by_key.get(("v1", "PersistentVolumeClaim", name))

    def secret(self, name: str) -> Manifest | None:
        return self._by_key.get(secret_key(name))

    def secret_url(self, name: str) -> str | None:
        """Key `url` of our Secret `name` (`<tq>-broker`, `<tq>-beat-state`), None while it is missing."""
        secret = self.secret(name)
        return decode_secret_value(secret, naming.BROKER_SECRET_URL_KEY) if secret is not None else None

    def broker_url(self, taskqueue: str) -> str | None:
        return self.secret_url(naming.broker_name(taskqueue))

    def beat_state_url(self, taskqueue: str) -> str | None:
        return self.secret_url(naming.beat_state_name(taskqueue))

    def of_component(self, component: naming.Component) -> list[Manifest]:
        return [item for item in self._by_key.values()
                if (item.get("metadata", {}).get("labels") or {}).get(naming.LABEL_COMPONENT) == component]


@dataclass(frozen=True)
class Rollout:
    """How far a Deployment is: its replicas wanted, ready and available, and whether it has rolled out."""

    desired: int
    ready: int
    available: int
    settled: bool  # the current template is rolled out and every wanted replica is available
    available_since: float | None = None  # when its Available condition last turned True (epoch seconds)

    @classmethod
    def of(cls, deployment: Mapping[str, Any] | None) -> Rollout:
        deployment = deployment or {}
        spec, status = deployment.get("spec", {}), deployment.get("status", {})
        desired = int(spec.get("replicas", 1))
        available = int(status.get("availableReplicas", 0))
        settled = (status.get("observedGeneration", 0) >= deployment.get("metadata", {}).get("generation", 0)
                   and int(status.get("updatedReplicas", 0)) >= desired and available >= desired)
        return cls(desired=desired, ready=int(status.get("readyReplicas", 0)), available=available, settled=settled,
                   available_since=_available_since(status))

    @property
    def serving(self) -> bool:
        """Every wanted replica is available, of the current template or, mid-rollout, of the one before
        (a surge-first rollout keeps the old pods until the new ones are available)."""
        return self.available >= self.desired

    def describe(self) -> str:
        return f"{self.ready}/{self.desired} ready"


def _available_since(status: Mapping[str, Any]) -> float | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Available" and condition.get("status") == "True":
            since = condition.get("lastTransitionTime")
            return datetime.datetime.fromisoformat(since.replace("Z", "+00:00")).timestamp() if since else None
    return None
