"""The Celery node names the operator gives workers: `<queue>@<pod>`, so that every heartbeat
names the queue a worker serves and the pod it runs in."""

from __future__ import annotations


def worker_hostname(queue: str, pod: str) -> str:
    """The Celery node name of a worker started with `--hostname <queue>@%h` in pod `pod`."""
    return f"{queue}@{pod}"


def split_worker_hostname(hostname: str) -> tuple[str, str] | None:
    """(queue, pod) of `<queue>@<pod>`; None for a name of another shape (e.g. `celery@host`
    would be queue "celery", which is fine: it simply matches no autoscaled queue of ours)."""
    queue, at, pod = hostname.partition("@")
    if not at or not queue or not pod:
        return None
    return queue, pod
