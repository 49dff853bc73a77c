"""Does a live child differ from the manifest the reconciler would apply? Pure.

Two ways a child falls behind, and one check for each:

- The spec changed, removals included (a user deleted an env var, a label, Flower's resources):
  every applied manifest carries the hash of its whole self in the annotation
  `celery-operator.dev/applied-hash`. A different hash means a different manifest, whatever was
  added or taken away, and the server-side apply of the new one removes what it no longer names.
- Somebody edited a field the reconciler sets (`kubectl edit`, another tool): the live object
  must still hold every field of the manifest (`holds`). Fields the server or other managers add
  are theirs and do not count.

A settled child passes both and is not written.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from kubernetes.utils import parse_quantity

from . import naming

# Fields that hold resource quantities, where "0.5" and "500m" are the same value.
_QUANTITY_FIELDS: Final = frozenset({"resources", "storage"})


def manifest_hash(manifest: Mapping[str, Any]) -> str:
    """A digest of the manifest's canonical JSON (its own hash annotation left out)."""
    unstamped = copy.deepcopy(dict(manifest))
    annotations = unstamped.get("metadata", {}).get("annotations")
    if annotations:
        annotations.pop(naming.ANNOTATION_APPLIED_HASH, None)
        if not annotations:
            del unstamped["metadata"]["annotations"]
    text = json.dumps(unstamped, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def stamped(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest with its hash in the applied-hash annotation: what the reconciler applies."""
    result = copy.deepcopy(dict(manifest))
    metadata = result.setdefault("metadata", {})
    metadata["annotations"] = {**(metadata.get("annotations") or {}),
                               naming.ANNOTATION_APPLIED_HASH: manifest_hash(manifest)}
    return result


def applied_hash(live: Mapping[str, Any]) -> str | None:
    return ((live.get("metadata") or {}).get("annotations") or {}).get(naming.ANNOTATION_APPLIED_HASH)


def needs_apply(desired: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """Whether the stamped manifest `desired` must be applied over `live` (None: it does not exist)."""
    if live is None:
        return True
    return applied_hash(live) != applied_hash(desired) or not holds(desired, live)


def _is_empty(value: Any) -> bool:
    return value is None or value == {} or value == [] or value == ""


def _quantities_equal(desired: Any, live: Any) -> bool:
    try:
        return Decimal(parse_quantity(desired)) == Decimal(parse_quantity(live))
    except (ValueError, TypeError, ArithmeticError):
        return False


def _by_name(items: Sequence[Any]) -> dict[str, Any] | None:
    if items and all(isinstance(item, Mapping) and "name" in item for item in items):
        return {item["name"]: item for item in items}
    return None


def holds(desired: Any, live: Any, in_quantity: bool = False) -> bool:
    """Whether `live` holds every field `desired` sets, with the same value.

    Named list items (containers, env, ports) match by name and keep their order; resource
    quantities compare by value ("0.5" == "500m"); an empty desired value is held by an absent one.
    """
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            return _is_empty(desired) and _is_empty(live)
        return all(
            holds(value, live.get(key), in_quantity or key in _QUANTITY_FIELDS)
            if not _is_empty(value) else _is_empty(live.get(key)) or isinstance(live.get(key), type(value))
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        if not isinstance(live, list):
            return not desired and _is_empty(live)
        desired_named, live_named = _by_name(desired), _by_name(live)
        if desired_named is not None and live_named is not None:
            return list(desired_named) == [name for name in live_named if name in desired_named] and all(
                holds(item, live_named.get(name), in_quantity) for name, item in desired_named.items())
        return len(desired) == len(live) and all(holds(d, v, in_quantity) for d, v in zip(desired, live))
    if desired == live:
        return True
    return in_quantity and _quantities_equal(desired, live)
