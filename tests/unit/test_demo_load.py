"""The demo's accounting: every task of the burst counted as completed, lost or duplicated, and the
reaction measured from the producer's first send."""

from __future__ import annotations

import json

import pytest
from devcluster import demo_load
from devcluster.demo_load import Observed, Progress, QueueLoad

pytestmark = pytest.mark.unit

LOADS = [QueueLoad("high_priority", tasks=4, seconds=3), QueueLoad("low_priority", tasks=2, seconds=1)]


def report(first_send: float, done: dict[str, list[int]]) -> Progress:
    parsed = Progress.parse(json.dumps({"firstSend": first_send, "done": done}))
    assert parsed is not None
    return parsed


def test_every_task_run_once_is_nothing_lost_nor_duplicated() -> None:
    progress = report(100.0, {"high_priority": [2, 0, 3, 1], "low_priority": [1, 0]})
    summary = demo_load.summarize(LOADS, progress, Observed(peak_workers=5, first_scaled_up=100.4,
                                                               first_consuming=103.1))
    assert (summary.sent, summary.completed, summary.lost, summary.duplicated) == (6, 6, 0, 0)
    assert summary.reaction == pytest.approx(0.4)
    assert summary.first_consuming == pytest.approx(3.1)
    assert "lost 0" in summary.line() and "peak workers 5" in summary.line()


def test_a_missing_number_is_lost_and_a_repeated_one_duplicated() -> None:
    progress = report(0.0, {"high_priority": [0, 1, 1, 3], "low_priority": [0, 1, 0]})
    summary = demo_load.summarize(LOADS, progress, Observed())
    assert (summary.completed, summary.lost, summary.duplicated) == (5, 1, 2)
    assert summary.reaction is None and "reaction not seen" in summary.line()


def test_a_number_outside_the_burst_does_not_count_as_completed() -> None:
    progress = report(0.0, {"high_priority": [0, 1, 2, 7], "low_priority": [0, 1]})
    assert demo_load.summarize(LOADS, progress, Observed()).lost == 1


@pytest.mark.parametrize("line", ["", "not json", '{"done": {}}', '{"firstSend": 1, "done": {"q": ["x"]}}'])
def test_a_partial_or_foreign_log_line_is_no_progress(line: str) -> None:
    assert Progress.parse(line) is None


def test_rows_take_consuming_workers_from_ready_replicas_and_done_from_the_runs() -> None:
    status = {"queues": [{"name": "high_priority", "pending": 7, "inFlight": 4, "desiredReplicas": 6,
                          "replicas": 3, "readyReplicas": 2}]}
    rows = demo_load.queue_rows(status, report(0.0, {"high_priority": [0, 0, 1]}), ["high_priority", "low_priority"])
    assert rows[0] == demo_load.QueueRow("high_priority", pending=7, in_flight=4, desired=6, consuming=2, done=2)
    assert rows[1] == demo_load.QueueRow("low_priority", 0, 0, 0, 0, 0)
    lines = demo_load.table(1.5, rows)
    assert len(lines) == 3 and "consuming" in lines[0] and lines[1].split()[1:] == ["7", "4", "6", "2", "2"]


def test_observed_keeps_the_first_scale_up_and_the_peak() -> None:
    observed = Observed()
    idle = [demo_load.QueueRow("high_priority", 5, 0, 3, 0, 0), demo_load.QueueRow("low_priority", 0, 1, 1, 1, 0)]
    busy = [demo_load.QueueRow("high_priority", 0, 6, 3, 3, 0), demo_load.QueueRow("low_priority", 0, 1, 1, 1, 0)]
    observed.saw(10.0, idle, "high_priority", replicas=0)
    observed.saw(10.5, idle, "high_priority", replicas=3)
    observed.saw(12.0, busy, "high_priority", replicas=3)
    observed.saw(13.0, idle, "high_priority", replicas=3)
    assert (observed.first_scaled_up, observed.first_consuming, observed.peak_workers) == (10.5, 12.0, 4)


def test_the_producer_plan_names_each_queue_its_tasks_and_their_length() -> None:
    assert json.loads(demo_load.producer_plan("r1", LOADS)) == {
        "run": "r1", "queues": {"high_priority": [4, 3], "low_priority": [2, 1]}}
