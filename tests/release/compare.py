"""What an upgrade does to a TaskQueue's children: the manifests one release built (recorded) against
the ones this tree builds, for the same specs (tests/release/manifests.py). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ROLLS, REWRITTEN, NEW, REMOVED = "rolls", "rewritten", "new", "removed"


def child_label(manifest: Mapping[str, Any]) -> str:
    """`<component> <Kind>`, the beat's state Redis told apart from its scheduler."""
    labels = manifest["metadata"].get("labels") or {}
    component = labels.get("app.kubernetes.io/component", "?")
    if labels.get("celery-operator.dev/beat-role") == "state":
        component = "beat-state"
    return f"{component} {manifest['kind']}"


def _hash(manifest: Mapping[str, Any]) -> str | None:
    return (manifest["metadata"].get("annotations") or {}).get("celery-operator.dev/applied-hash")


def _template(manifest: Mapping[str, Any]) -> Any:
    return (manifest.get("spec") or {}).get("template")


def changes(previous: Mapping[str, Mapping[str, Any]], current: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Per child label, what the upgrade does to it: rolls (a Deployment's pod template differs),
    rewritten (its manifest differs, its pods stay), new, removed. Unchanged children are left out;
    of two changes to one label, the heavier wins."""
    found: dict[str, str] = {}
    weight = {ROLLS: 3, REMOVED: 2, NEW: 1, REWRITTEN: 0}
    for taskqueue in sorted(set(previous) | set(current)):
        before, after = previous.get(taskqueue, {}), current.get(taskqueue, {})
        for key in sorted(set(before) | set(after)):
            old, new = before.get(key), after.get(key)
            if old is None:
                change, label = NEW, child_label(new)
            elif new is None:
                change, label = REMOVED, child_label(old)
            elif _hash(old) == _hash(new):
                continue
            else:
                change = ROLLS if _template(old) != _template(new) else REWRITTEN
                label = child_label(new)
            if label not in found or weight[change] > weight[found[label]]:
                found[label] = change
    return found
