"""Serve TaskQueues and PeriodicJobs even when their CRDs are installed after the operator started.

kopf learns which resources exist from API discovery: once at startup, then again for an API group
on each watch event of one of that group's CRDs. The API server publishes a new CRD in discovery a
moment after that CRD's last event (Established), so a rescan made on that event can miss it and
nothing ever triggers another: the operator runs but never watches TaskQueues. It never notices
them at all when it may not watch CRDs. While one of our kinds is not watched, this asks kopf to
rescan our group, exactly as it does on a CRD event: 1 s after each change kopf sees, else twice as
long each time up to 30 s, since kopf itself warns on each rescan that finds them missing.

kopf has no public call for that rescan, so this module is the one place that uses kopf's internals,
and the operator runs without it (with a warning) if they ever move.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from . import naming

try:  # kopf internals, see the module docstring
    from kopf._cogs.structs.references import Insights
    from kopf._core.reactor.observation import process_discovered_resource_event
except ImportError:  # pragma: no cover - depends on the installed kopf
    Insights = None  # type: ignore[assignment,misc]
    process_discovered_resource_event = None  # type: ignore[assignment]

OUR_PLURALS = frozenset({naming.TASKQUEUE_PLURAL, naming.PERIODICJOB_PLURAL})
FIRST_RESCAN_SECONDS = 1.0
LONGEST_RESCAN_SECONDS = 30.0


def new_insights() -> Any | None:
    """kopf's record of served resources, to hand to kopf.run and to keep_discovering alike."""
    return Insights() if Insights is not None else None


def unwatched_kinds(watched_plurals: set[str]) -> list[str]:
    """Our kinds kopf does not watch yet, given the plurals of our group it does watch."""
    return sorted(OUR_PLURALS - watched_plurals)


def next_rescan_delay(delay: float) -> float:
    return min(delay * 2, LONGEST_RESCAN_SECONDS)


def _watched_plurals(insights: Any) -> set[str]:
    return {resource.plural for resource in insights.watched_resources if resource.group == naming.GROUP}


async def rescan_group(insights: Any, settings: Any, registry: Any) -> None:
    """What kopf does on a watch event of one of our CRDs: re-read discovery for our group."""
    event = {"type": "MODIFIED", "object": {"spec": {"group": naming.GROUP}}}
    await process_discovered_resource_event(raw_event=event, settings=settings, registry=registry,
                                            insights=insights)


async def _revised_within(insights: Any, seconds: float) -> bool:
    async with insights.revised:
        try:
            await asyncio.wait_for(insights.revised.wait(), seconds)
        except TimeoutError:
            return False
    return True


async def keep_discovering(insights: Any, settings: Any, registry: Any, logger: logging.Logger,
                           first_delay: float = FIRST_RESCAN_SECONDS) -> None:
    """Until cancelled: while one of our kinds is not watched, rescan our group, backing off."""
    await insights.ready_resources.wait()
    reported: list[str] = []
    delay = first_delay
    while True:
        missing = unwatched_kinds(_watched_plurals(insights))
        if missing != reported:
            if missing:
                logger.warning("The CRDs of %s (group %s) are not served: apply crds/ or install the chart "
                               "with crds.install=true; the operator picks them up without a restart.",
                               ", ".join(missing), naming.GROUP)
            else:
                logger.info("Serving %s.", ", ".join(sorted(OUR_PLURALS)))
            reported = missing
        if missing:
            if await _revised_within(insights, delay):  # a CRD of our group changed: look again soon
                delay = first_delay
                await asyncio.sleep(first_delay)
            else:
                delay = next_rescan_delay(delay)
            try:
                await rescan_group(insights, settings, registry)
            except Exception as error:  # noqa: BLE001 - retried at the next rescan
                logger.debug("Rescanning API discovery failed: %s", error)
        else:
            delay = first_delay
            async with insights.revised:  # until kopf's view changes, e.g. our CRDs are deleted
                await insights.revised.wait()


def start(memo: Any, settings: Any, registry: Any) -> None:
    """Begin keep_discovering on the operator's loop, if the entry point shared kopf's insights."""
    logger = logging.getLogger(__name__)
    insights = getattr(memo, "kopf_insights", None)
    if process_discovered_resource_event is None:
        logger.warning("This kopf has moved the internals the rescans use: CRDs applied after the operator "
                       "started are noticed by kopf's own CRD watch alone.")
        return
    if insights is None:
        logger.info("CRDs are discovered by kopf alone (run `python -m celery_operator` for the rescans "
                    "that catch CRDs installed after the operator started).")
        return
    memo.rediscovery = asyncio.get_running_loop().create_task(
        keep_discovering(insights, settings, registry, logger), name="celery-operator rediscovery")


def stop(memo: Any) -> None:
    task = getattr(memo, "rediscovery", None)
    if task is not None:
        task.cancel()
