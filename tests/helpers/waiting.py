"""Wait on a condition with a deadline: the tests never sleep and hope."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


class ConditionNotMet(AssertionError):
    pass


def wait_for(check: Callable[[], T], timeout: float, description: str, interval: float = 0.1) -> T:
    """Call `check` until it returns something truthy; return that, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    seen: object = None
    while True:
        try:
            result = check()
            if result:
                return result
            seen, last_error = result, None
        except Exception as error:  # a check may fail transiently while things start
            last_error = error
        if time.monotonic() >= deadline:
            detail = f"last error: {last_error!r}" if last_error else f"last seen: {_brief(seen)}"
            raise ConditionNotMet(f"timed out after {timeout}s waiting for {description} ({detail})")
        time.sleep(interval)


def _brief(value: object, limit: int = 500) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def holds_for(check: Callable[[], T], seconds: float, description: str, interval: float = 0.2) -> T:
    """Call `check` for `seconds`: it must stay truthy the whole time (that something does NOT
    happen can only be seen over a window). Returns its last value."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if not result:
            raise ConditionNotMet(f"{description} stopped holding")
        if time.monotonic() >= deadline:
            return result
        time.sleep(interval)
