"""The pure parts of the rescans that find CRDs installed after the operator started."""

from __future__ import annotations

import pytest

from celery_operator import rediscovery

pytestmark = pytest.mark.unit


def test_every_kind_is_missing_until_kopf_watches_it() -> None:
    assert rediscovery.unwatched_kinds(set()) == ["periodicjobs", "taskqueues"]
    assert rediscovery.unwatched_kinds({"taskqueues"}) == ["periodicjobs"]
    assert rediscovery.unwatched_kinds({"periodicjobs", "taskqueues"}) == []


def test_rescans_back_off_to_a_ceiling() -> None:
    delays = [rediscovery.FIRST_RESCAN_SECONDS]
    for _ in range(10):
        delays.append(rediscovery.next_rescan_delay(delays[-1]))
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == delays[-1] == rediscovery.LONGEST_RESCAN_SECONDS


def test_the_installed_kopf_still_has_what_the_rescans_use() -> None:
    """The rescans use two kopf internals; a kopf upgrade that moves them fails here, not silently."""
    assert rediscovery.new_insights() is not None
    assert rediscovery.process_discovered_resource_event is not None
