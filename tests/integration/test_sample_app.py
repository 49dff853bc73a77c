"""The sample app (app/) against a real Redis and a real Celery worker: tasks run, routing holds,
and SIGTERM is a clean warm shutdown."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from tests.helpers.processes import CeleryWorker, RedisServer, run_in_app, start_worker
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.integration

RESULT_TIMEOUT = 60


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[Celery]:
    """A plain Celery client (no app code) to send tasks by name and read results."""
    app = Celery("itest-client", broker=redis_server.url, backend=redis_server.url)
    app.conf.broker_connection_retry_on_startup = True
    try:
        yield app
    finally:
        app.close()


def test_sample_app_routes_runs_and_shuts_down_warm(
    redis_server: RedisServer, client: Celery, tmp_path: Path
) -> None:
    # Produce with the app's own configuration (CELERY_TASK_ROUTES) before any worker runs, so the
    # messages stay where the routing put them.
    produced = json.loads(run_in_app(
        "import json, myproject\n"
        "from myapp.tasks import add, process_important_data, process_regular_data\n"
        "print(json.dumps({'add': add.delay(2, 3).id,\n"
        "                  'important': process_important_data.delay({'order': 7}).id,\n"
        "                  'regular': process_regular_data.delay('r').id}))\n",
        broker_url=redis_server.url, result_backend=redis_server.url,
    ))
    with redis_server.client() as broker:
        assert broker.llen("high_priority") == 1
        assert broker.llen("low_priority") == 1
        assert broker.llen("celery") == 1
        queued = json.loads(broker.lindex("high_priority", 0))
        assert queued["headers"]["task"] == "myapp.tasks.process_important_data"

    worker: CeleryWorker = start_worker(
        queues=["high_priority", "low_priority", "celery"],
        broker_url=redis_server.url, result_backend=redis_server.url,
        log=tmp_path / "worker.log",
    )
    try:
        assert client.AsyncResult(produced["add"]).get(timeout=RESULT_TIMEOUT) == 5
        assert client.AsyncResult(produced["important"]).get(timeout=RESULT_TIMEOUT) == {
            "processed": {"order": 7}, "priority": "high",
        }
        assert client.AsyncResult(produced["regular"]).get(timeout=RESULT_TIMEOUT) == {
            "processed": "r", "priority": "low",
        }

        recorded = client.send_task("myapp.tasks.record", args=["itest-record", 42], queue="celery")
        assert recorded.get(timeout=RESULT_TIMEOUT) == recorded.id
        with redis_server.client() as broker:
            entries = wait_for(lambda: broker.lrange("itest-record", 0, -1), 10, "the record entry")
        entry = json.loads(entries[0])
        assert entry["id"] == recorded.id
        assert entry["value"] == 42
        assert entry["hostname"].startswith("high_priority@")
    except BaseException:
        print(worker.log_text())
        raise
    finally:
        exit_code = worker.stop(grace=30)

    assert exit_code == 0, worker.log_text()
    assert "Warm shutdown" in worker.log_text()
