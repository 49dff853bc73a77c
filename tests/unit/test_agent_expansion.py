"""$(VAR) expansion: the Kubernetes rules, case by case."""

from __future__ import annotations

import pytest

from devcluster.agent.expansion import expand, lookup_in

pytestmark = pytest.mark.unit

KNOWN = lookup_in({"A": "alpha", "B": "beta", "EMPTY": ""})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$(A)", "alpha"),
        ("x-$(A)-$(B)-y", "x-alpha-beta-y"),
        ("$(EMPTY)", ""),
        ("$(UNKNOWN)", "$(UNKNOWN)"),
        ("$$(A)", "$(A)"),
        ("$$$(A)", "$alpha"),
        ("$$", "$"),
        ("$", "$"),
        ("a$", "a$"),
        ("$A", "$A"),
        ("$(", "$("),
        ("$(A", "$(A"),
        ("$(A $(B)", "$(A $(B)"),
        ("100$$ and $(A)", "100$ and alpha"),
        ("()$()", "()$()"),
        ("ünïcode $(A) ✓", "ünïcode alpha ✓"),
    ],
)
def test_expansion_follows_kubernetes(text: str, expected: str) -> None:
    assert expand(text, KNOWN) == expected


def test_first_context_wins() -> None:
    lookup = lookup_in({"X": "first"}, {"X": "second", "Y": "only-second"})
    assert expand("$(X) $(Y)", lookup) == "first only-second"
