"""The sample app's tasks, plus two helpers the operator's tests use (sleep, record)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import current_app, shared_task


@shared_task
def add(x: float, y: float) -> float:
    return x + y


@shared_task
def process_important_data(data: Any) -> dict[str, Any]:
    """Routed to the high_priority queue (CELERY_TASK_ROUTES)."""
    return {"processed": data, "priority": "high"}


@shared_task
def process_regular_data(data: Any) -> dict[str, Any]:
    """Routed to the low_priority queue (CELERY_TASK_ROUTES)."""
    return {"processed": data, "priority": "low"}


@shared_task
def daily_cleanup() -> str:
    return "cleaned"


@shared_task
def sleep(seconds: float) -> float:
    """Hold a worker slot for `seconds`: load for autoscaling and shutdown tests."""
    time.sleep(seconds)
    return seconds


@shared_task(bind=True)
def record(self, key: str, value: Any = None, seconds: float = 0) -> str:
    """Append {"id", "value", "hostname"} to the Redis list `key`, so a test sees which runs happened;
    after `seconds` of work when given (a task that must survive a scale-down).

    The list lives at RECORD_REDIS_URL, by default the broker.
    """
    if seconds:
        time.sleep(seconds)
    url = os.environ.get("RECORD_REDIS_URL") or current_app.conf.broker_url
    entry = json.dumps({"id": self.request.id, "value": value, "hostname": self.request.hostname})
    client = redis.Redis.from_url(url)
    try:
        client.rpush(key, entry)
    finally:
        client.close()
    return self.request.id


@shared_task
def allocate(megabytes: int, after_seconds: float = 0) -> int:
    """Hold `megabytes` of memory (every page written), after `after_seconds`: a task that outgrows
    its container's memory limit, for the operator's OOM tests."""
    time.sleep(after_seconds)
    block = bytearray(megabytes * 1024 * 1024)
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    time.sleep(1)
    return len(block)
