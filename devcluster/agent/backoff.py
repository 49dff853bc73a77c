"""The crash-loop back-off of restarted containers, as the kubelet keeps it.

Per container: the first restart after an exit is immediate and arms a back-off of 10 s; each
further restart doubles it, up to 5 minutes. The wait is counted from the moment the container
finished (time already spent waiting for other reasons counts). An entry armed more than twice
the maximum (10 min) before the exit is forgotten, which resets the sequence for a container
that ran well for that long.
"""

from __future__ import annotations

from dataclasses import dataclass

INITIAL_BACKOFF_SECONDS = 10.0
MAXIMUM_BACKOFF_SECONDS = 300.0


@dataclass(frozen=True)
class Backoff:
    """The armed back-off of one container: how long, and when it was last armed."""

    seconds: float
    armed_at: float


def _expired(entry: Backoff, finished_at: float, maximum: float) -> bool:
    return finished_at - entry.armed_at > 2 * maximum


def restart_delay(entry: Backoff | None, finished_at: float, now: float,
                  maximum: float = MAXIMUM_BACKOFF_SECONDS) -> float:
    """Seconds still to wait before the container that finished at `finished_at` may restart."""
    if entry is None or _expired(entry, finished_at, maximum):
        return 0.0
    return max(0.0, entry.seconds - (now - finished_at))


def after_restart(entry: Backoff | None, finished_at: float, now: float,
                  initial: float = INITIAL_BACKOFF_SECONDS,
                  maximum: float = MAXIMUM_BACKOFF_SECONDS) -> Backoff:
    """The back-off to keep once the container has been restarted at `now`."""
    if entry is None or _expired(entry, finished_at, maximum):
        return Backoff(seconds=initial, armed_at=now)
    return Backoff(seconds=min(entry.seconds * 2, maximum), armed_at=now)


def backoff_message(seconds: float, container: str, pod_name: str, namespace: str, uid: str) -> str:
    """The kubelet's CrashLoopBackOff waiting message."""
    return (f"back-off {_go_duration(seconds)} restarting failed container={container} "
            f"pod={pod_name}_{namespace}({uid})")


def _go_duration(seconds: float) -> str:
    whole = int(round(seconds))
    minutes, rest = divmod(whole, 60)
    if minutes:
        return f"{minutes}m{rest}s"
    return f"{rest}s"
