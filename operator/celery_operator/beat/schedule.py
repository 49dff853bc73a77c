"""When a PeriodicJob is due: its slots. Pure: no clock, no I/O.

A slot is an instant (epoch seconds, a float with millisecond precision) at which one run is due.

- `interval`: the multiples of the interval since the Unix epoch. Wall-clock aligned, not relative
  to the last run: a 2s job is due at every even second, a 1h job at every full hour (UTC), so a
  restarted beat finds the same slots as the one before it.
- `schedule`: the instants a 5-field cron expression (or @hourly, @daily, @weekly, @monthly,
  @yearly) matches, read in `timeZone` (IANA, zoneinfo). Daylight-saving transitions are croniter's
  and zoneinfo's business, with one rule on top, Vixie cron's: when clocks go back and a wall-clock
  time happens twice, a job with a fixed hour (the hour field does not start with `*`) runs at the
  first of the two only; `0 * * * *` keeps running every real hour. A time skipped when clocks go
  forward runs at the first instant after the gap (croniter's behaviour, and Vixie cron's).

Validation errors are `SpecError`s naming the field a user edits: spec.schedule, spec.interval,
spec.timeZone.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from ..models import CRON_SCHEDULE_PATTERN, DEFAULT_TIME_ZONE, SpecError, parse_go_duration

MACROS: Final = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
}
FIELD_NAMES: Final = ("minute", "hour", "day-of-month", "month", "day-of-week")
_MONTHS: Final = frozenset("jan feb mar apr may jun jul aug sep oct nov dec".split())
_DAYS: Final = frozenset("sun mon tue wed thu fri sat".split())
# Words croniter accepts per field; anything else (notably croniter's `R` random and `H` hashed
# extensions, which would give every parse different slots) is refused.
_WORDS: Final = (frozenset(), frozenset(), frozenset({"l"}), _MONTHS, _DAYS | {"l"})
_CRON = re.compile(CRON_SCHEDULE_PATTERN)
_WORD = re.compile(r"[A-Za-z]+")
MIN_INTERVAL_MS: Final = 1000
# Far enough back that any cron expression croniter accepts has a match after it.
_VALIDATION_START: Final = datetime(2000, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Schedule:
    """Exactly one of interval_ms (a whole number of milliseconds) and cron (5 fields) is set."""

    interval_ms: int | None = None
    cron: str | None = None
    time_zone: str = DEFAULT_TIME_ZONE

    @property
    def zone(self) -> ZoneInfo:
        return _zone(self.time_zone)

    def describe(self) -> str:
        if self.interval_ms is not None:
            return f"every {format_interval(self.interval_ms)}"
        return f"on {self.cron!r} in {self.time_zone}"


def format_interval(interval_ms: int) -> str:
    seconds, ms = divmod(interval_ms, 1000)
    return f"{seconds}s" if ms == 0 else f"{interval_ms / 1000:g}s"


@lru_cache(maxsize=256)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def parse_time_zone(name: str) -> ZoneInfo:
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise SpecError("spec.timeZone", f"{name!r} is not a known IANA time zone (e.g. UTC, Europe/Berlin, "
                                         "America/New_York)") from None


def _check_words(fields: list[str], original: str) -> None:
    for index, (field, allowed) in enumerate(zip(fields, _WORDS)):
        for word in _WORD.findall(field):
            if word.lower() not in allowed:
                raise SpecError("spec.schedule", f"{original!r}: {word!r} is not allowed in the "
                                                 f"{FIELD_NAMES[index]} field")


def parse_cron(expression: str, zone: ZoneInfo) -> str:
    """The 5-field expression (macros expanded), checked by croniter. Raises SpecError."""
    text = " ".join(expression.split())
    if not _CRON.fullmatch(text):
        raise SpecError("spec.schedule", f"{expression!r} must be a 5-field cron expression (minute hour "
                                         "day-of-month month day-of-week) or one of " + ", ".join(MACROS))
    cron = MACROS.get(text.lower(), text)
    _check_words(cron.split(), expression)
    try:
        croniter(cron, _VALIDATION_START.astimezone(zone)).get_next(datetime)
    except CroniterError as error:  # bad fields, or a date that never comes (31 February)
        raise SpecError("spec.schedule", f"{expression!r} is not a valid cron expression: {error}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise SpecError("spec.schedule", f"{expression!r} is not a valid cron expression: {error}") from None
    return cron


def parse_schedule(schedule: str | None, interval: str | None, time_zone: str | None = None) -> Schedule:
    """A PeriodicJob's timing from spec.schedule | spec.interval and spec.timeZone. Raises SpecError."""
    if (schedule is None) == (interval is None):
        raise SpecError("spec", "set exactly one of spec.schedule and spec.interval")
    zone_name = time_zone or DEFAULT_TIME_ZONE
    zone = parse_time_zone(zone_name)
    if interval is not None:
        interval_ms = round(parse_go_duration(interval, "spec.interval") * 1000)
        if interval_ms < MIN_INTERVAL_MS:
            raise SpecError("spec.interval", f"{interval!r} must be at least 1s")
        return Schedule(interval_ms=interval_ms, time_zone=zone_name)
    assert schedule is not None
    return Schedule(cron=parse_cron(schedule, zone), time_zone=zone_name)


# --- slots ---------------------------------------------------------------------------------------

def _ms_floor(instant: float) -> int:
    """The whole millisecond at or before `instant` (tolerating float noise of a slot read back)."""
    return math.floor(instant * 1000 + 1e-6)


def _second_of_repeated_time(slot: datetime, zone: ZoneInfo) -> bool:
    """Whether `slot` is the second occurrence of a wall-clock time that happens twice (clocks went back)."""
    local = datetime.fromtimestamp(slot.timestamp(), zone)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


def _fixed_hour(cron: str) -> bool:
    return not cron.split()[1].startswith("*")


def _cron_slots(schedule: Schedule, start: float, forward: bool):
    """Cron matches strictly after (forward) or before (backward) `start`, as epoch seconds."""
    assert schedule.cron is not None
    zone = schedule.zone
    skip_repeats = _fixed_hour(schedule.cron)
    iterator = croniter(schedule.cron, datetime.fromtimestamp(start, zone))
    step = iterator.get_next if forward else iterator.get_prev
    while True:
        try:
            slot = step(datetime)
        except CroniterError:  # no further match (e.g. a date croniter cannot find within its window)
            return
        if skip_repeats and _second_of_repeated_time(slot, zone):
            continue
        yield slot.timestamp()


def next_slot(schedule: Schedule, after: float) -> float | None:
    """The first slot strictly after `after` (None if the schedule has no further match)."""
    if schedule.interval_ms is not None:
        step = schedule.interval_ms
        return (_ms_floor(after) // step + 1) * step / 1000
    for slot in _cron_slots(schedule, after, forward=True):
        if slot > after:
            return slot
    return None


def due_slots(schedule: Schedule, after: float, now: float, limit: int) -> list[float]:
    """The slots in (after, now], oldest first: at most the `limit` most recent of them.

    `after` is where the job stands (the last slot sent, or when its schedule took effect);
    more than `limit` due slots means a long outage, and the older ones are not caught up.
    """
    if limit <= 0 or now <= after:
        return []
    if schedule.interval_ms is not None:
        step = schedule.interval_ms
        first = _ms_floor(after) // step + 1
        last = _ms_floor(now) // step
        if last < first:
            return []
        return [k * step / 1000 for k in range(max(first, last - limit + 1), last + 1)]
    found: list[float] = []
    # croniter steps back from a start it does not count itself: start just after `now`.
    for slot in _cron_slots(schedule, math.floor(now) + 1, forward=False):
        if slot <= after or len(found) == limit:
            break
        if slot <= now:
            found.append(slot)
    found.reverse()
    return found


def format_slot(slot: float) -> str:
    """ISO 8601 in UTC: `2026-11-24T03:00:00Z`, with milliseconds only when the slot has them."""
    moment = datetime.fromtimestamp(round(slot, 3), timezone.utc)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_slot(text: str) -> float:
    """The slot of `format_slot`'s text."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
