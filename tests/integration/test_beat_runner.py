"""The beat program against a real, password-protected Redis that is both the broker and the state
store: the claim keeps every run unique however many beats run, a restarted beat catches up what
it missed exactly once, and the URLs never reach a log line.

In-process tests drive `Beat.step()` with a test clock and a recording send hook; process tests run
`python -m celery_operator.beat` as the operator's pod does and count the real messages it put on
the broker, by the task id each carries (`<namespace>/<job>@<slot>`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_operator import naming
from celery_operator.beat.jobs import encode_entry, job_entry, split_task_id
from celery_operator.beat.runner import Beat
from celery_operator.beat.schedule import parse_slot
from celery_operator.beat.state import BeatState, BeatStateStore, BeatStore, StateLocation
from celery_operator.models import PeriodicJobSpec

from tests.helpers.brokers import REDIS_PASSWORD, RedisBroker
from tests.helpers.processes import REPO_ROOT, log_tail, stop_process
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.integration

NAMESPACE, TASKQUEUE = "beat-ns", "shop"
PREFIX = naming.beat_key_prefix(NAMESPACE, TASKQUEUE)
T0 = 1_800_000_000.0  # a fixed clock for the in-process tests (2027-01-15T08:00:00Z), a multiple of 2 s


@pytest.fixture
def broker(redis_broker: RedisBroker) -> RedisBroker:
    """The Redis that is both the beat's broker and its state store."""
    return redis_broker


def put_job(url: str, name: str, active_since: float, queue: str = "beat-it", **spec: Any) -> str:
    """Write a job entry the way the operator does (compare-and-set against what is there)."""
    definition = {"taskQueueRef": {"name": TASKQUEUE}, "task": "myapp.tasks.record", "interval": "2s",
                  "args": [name], "queue": queue, **spec}
    parsed = PeriodicJobSpec.parse({k: v for k, v in definition.items() if v is not None})
    text = encode_entry(job_entry(parsed, uid=f"uid-{name}", generation=1, task_queue_uid="tq-uid",
                                  previous=None, now=active_since))
    current = read_state(url, name).jobs.get(name)
    assert write_jobs(url, {name: (current, text)}, {}) == []
    return text


def read_state(url: str, name: str | None = None) -> BeatState:
    """The state as the operator reads it."""
    store = BeatStateStore()
    try:
        return store.read(StateLocation(url, PREFIX), name)
    finally:
        store.close()


def write_jobs(url: str, upserts: dict[str, tuple[str | None, str]], removals: dict[str, str | None]) -> list[str]:
    """Compare-and-set `jobs` as the operator does."""
    store = BeatStateStore()
    try:
        return store.write_jobs(StateLocation(url, PREFIX), upserts, removals)
    finally:
        store.close()


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Recorder:
    """The send hook: what was sent, and (optionally) a failure to raise first."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, float, str]] = []
        self.failures = 0
        self.lock = threading.Lock()

    def __call__(self, job: Any, slot: float, identifier: str) -> None:
        with self.lock:
            if self.failures:
                self.failures -= 1
                raise ConnectionError(f"broker down (redis://:{REDIS_PASSWORD}@nowhere)")
            self.sent.append((job.name, slot, identifier))


def beat(url: str, send: Recorder, clock: Clock, **options: Any) -> Beat:
    return Beat(BeatStore(StateLocation(url, PREFIX)), send, namespace=NAMESPACE, clock=clock, **options)


# --- in process ----------------------------------------------------------------------------------

def test_slots_after_active_since_are_sent_once_with_deterministic_ids(broker: RedisBroker) -> None:
    put_job(broker.url, "every-2s", active_since=T0 + 0.3)
    clock, sent = Clock(T0 + 0.5), Recorder()
    runner = beat(broker.url, sent, clock)
    runner.step()
    assert sent.sent == [], "nothing is due before the schedule took effect"
    clock.now = T0 + 2.0
    wait = runner.step()
    assert sent.sent == [("every-2s", T0 + 2, "beat-ns/every-2s@2027-01-15T08:00:02Z")]
    assert wait == runner.poll_seconds, "the next slot is 2 s away: poll again in half a second"
    clock.now = T0 + 3.9
    assert runner.step() == pytest.approx(0.1), "wake up right at the next slot"
    runner.step()
    assert len(sent.sent) == 1, "a slot is never sent twice"
    assert read_state(broker.url).fired == {"every-2s": str(int(T0 + 2))}
    assert read_state(broker.url).heartbeat["instance"] == runner.instance


def test_two_beats_contending_never_send_the_same_slot(broker: RedisBroker) -> None:
    """No lease: both beats try every slot at the same instants; the claim lets exactly one send."""
    for index in range(5):
        put_job(broker.url, f"job-{index}", active_since=T0, interval="1s")
    clock, sent = Clock(T0), Recorder()
    beats = [beat(broker.url, sent, clock, lease=False) for _ in range(2)]
    for second in range(1, 21):
        clock.now = T0 + second
        barrier = threading.Barrier(2)

        def run(b: Beat) -> None:
            barrier.wait()
            b.step()

        threads = [threading.Thread(target=run, args=(b,)) for b in beats]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    counts = Counter((name, slot) for name, slot, _ in sent.sent)
    assert len(counts) == 5 * 20, "every slot of every job was sent"
    assert set(counts.values()) == {1}, [key for key, n in counts.items() if n > 1]
    assert sum(b.sent for b in beats) == 100 and all(b.sent > 0 for b in beats), [b.sent for b in beats]


def test_the_lease_makes_a_second_beat_stand_by_until_the_first_lets_go(broker: RedisBroker) -> None:
    put_job(broker.url, "every-2s", active_since=T0)
    clock, sent = Clock(T0 + 2), Recorder()
    first, second = beat(broker.url, sent, clock), beat(broker.url, sent, clock)
    first.step()
    second.step()
    assert (first.leading, second.leading) == (True, False) and len(sent.sent) == 1
    stop = threading.Event()
    stop.set()
    first.run(stop)  # stops at once and releases the lease
    clock.now = T0 + 4
    second.step()
    assert second.leading and [slot for _, slot, _ in sent.sent] == [T0 + 2, T0 + 4]


def test_a_restarted_beat_catches_up_missed_slots_once_each(broker: RedisBroker) -> None:
    put_job(broker.url, "every-2s", active_since=T0)
    clock, sent = Clock(T0 + 2), Recorder()
    first = beat(broker.url, sent, clock)
    first.step()
    stopped = threading.Event()
    stopped.set()
    first.run(stopped)  # SIGTERM: the lease is released
    clock.now = T0 + 11  # no beat ran for 9 seconds: 4, 6, 8 and 10 are due
    restarted = beat(broker.url, sent, clock)
    restarted.step()
    restarted.step()
    assert [slot - T0 for _, slot, _ in sent.sent] == [2, 4, 6, 8, 10]


def test_catch_up_is_capped(broker: RedisBroker) -> None:
    put_job(broker.url, "every-2s", active_since=T0)
    clock, sent = Clock(T0 + 3600), Recorder()
    beat(broker.url, sent, clock, max_catch_up=3).step()
    assert [slot - T0 for _, slot, _ in sent.sent] == [3596, 3598, 3600]


def test_a_changed_suspended_or_removed_job_is_not_sent_from_a_stale_read(broker: RedisBroker) -> None:
    text = put_job(broker.url, "every-2s", active_since=T0)
    store = BeatStore(StateLocation(broker.url, PREFIX))
    assert store.claim("every-2s", T0 + 2, text)[0] == 1
    assert store.claim("every-2s", T0 + 2, text)[0] == 0, "claimed once only"
    suspended = put_job(broker.url, "every-2s", active_since=T0, suspend=True)
    assert store.claim("every-2s", T0 + 4, text)[0] == -1, "the definition the beat read is stale"
    clock, sent = Clock(T0 + 10), Recorder()
    beat(broker.url, sent, clock).step()
    assert sent.sent == [], "suspended"
    assert write_jobs(broker.url, {}, {"every-2s": suspended}) == []
    assert read_state(broker.url).fired == {}, "a removed job's fired goes with it"


def test_a_failed_send_is_given_back_and_retried(broker: RedisBroker, caplog: pytest.LogCaptureFixture) -> None:
    put_job(broker.url, "every-2s", active_since=T0)
    clock, sent = Clock(T0 + 2), Recorder()
    sent.failures = 1
    runner = beat(broker.url, sent, clock, secrets=(f"redis://:{REDIS_PASSWORD}@nowhere",))
    runner.step()
    assert sent.sent == [] and read_state(broker.url).fired == {}, "the claim was undone"
    runner.step()
    assert [slot for _, slot, _ in sent.sent] == [T0 + 2]
    assert "sending run" in caplog.text and REDIS_PASSWORD not in caplog.text


# --- the program, as the beat pod runs it ----------------------------------------------------------

def start_beat(broker: RedisBroker, log: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, CELERY_BROKER_URL=broker.url, CELERY_OPERATOR_BEAT_STATE_URL=broker.url,
               CELERY_OPERATOR_BEAT_KEY_PREFIX=PREFIX, CELERY_OPERATOR_BEAT_INSTANCE=log.stem,
               PYTHONUNBUFFERED="1")
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "celery_operator.beat", *args], cwd=REPO_ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def messages(url: str, queue: str = "beat-it") -> list[dict[str, Any]]:
    """The messages waiting on a Redis queue (kombu's list), oldest first."""
    return [json.loads(raw) for raw in reversed(redis.Redis.from_url(url).lrange(queue, 0, -1))]


def sent_slots(url: str, job: str) -> list[float]:
    slots = []
    for message in messages(url):
        parsed = split_task_id(message["headers"]["id"])
        assert parsed is not None and parsed[:2] == (NAMESPACE, job), message["headers"]["id"]
        assert message["headers"]["task"] == "myapp.tasks.record"
        slots.append(parse_slot(parsed[2]))
    return slots


def assert_consecutive_and_unique(slots: list[float], step: float) -> None:
    assert len(slots) == len(set(slots)), f"a run was sent twice: {sorted(slots)}"
    ordered = sorted(slots)
    gaps = [b - a for a, b in zip(ordered, ordered[1:]) if abs(b - a - step) > 1e-6]
    assert not gaps, f"runs missing: {gaps} in {ordered}"


def stop(process: subprocess.Popen, log: Path) -> None:
    assert stop_process(process, grace=10) == 0, log_tail(log)


@pytest.mark.parametrize("mode", [(), ("--no-lease",)], ids=["lease", "contending"])
def test_two_beat_processes_send_every_slot_exactly_once(broker: RedisBroker, tmp_path: Path,
                                                         mode: tuple[str, ...]) -> None:
    put_job(broker.url, "every-1s", active_since=time.time(), interval="1s")
    logs = [tmp_path / "beat-a.log", tmp_path / "beat-b.log"]
    processes = [start_beat(broker, log, *mode) for log in logs]
    try:
        wait_for(lambda: len(messages(broker.url)) >= 8, 30, "eight runs")
    finally:
        for process, log in zip(processes, logs):
            stop(process, log)
    slots = sent_slots(broker.url, "every-1s")
    assert_consecutive_and_unique(slots, 1.0)
    texts = [log.read_text() for log in logs]
    senders = [text.count("sent every-1s run") for text in texts]
    assert sum(senders) == len(slots), senders
    if not mode:
        assert sorted(senders)[0] == 0, f"with the lease one beat stands by: {senders}"
    for text in texts:
        assert REDIS_PASSWORD not in text
        assert "stopped" in text, "SIGTERM stops the beat cleanly"


def test_a_beat_killed_and_replaced_leaves_no_run_missing_or_doubled(broker: RedisBroker, tmp_path: Path) -> None:
    """The leader dies without releasing its lease (SIGKILL); the replacement waits the lease out
    and catches up the runs due meanwhile; then a graceful stop and restart: no gap either."""
    put_job(broker.url, "every-1s", active_since=time.time(), interval="1s")
    first_log, second_log, third_log = (tmp_path / f"beat-{n}.log" for n in ("first", "second", "third"))
    first = start_beat(broker, first_log)
    wait_for(lambda: len(messages(broker.url)) >= 3, 30, "three runs from the first beat")
    first.kill()
    first.wait()
    killed_at = time.time()
    second = start_beat(broker, second_log)
    try:
        wait_for(lambda: max(sent_slots(broker.url, "every-1s")) >= killed_at + 8, 40,
                 "the replacement to lead and catch up")
    finally:
        stop(second, second_log)
    stopped_at = time.time()
    time.sleep(3)  # a gap with no beat at all: three slots fall due meanwhile
    third = start_beat(broker, third_log)
    try:
        wait_for(lambda: max(sent_slots(broker.url, "every-1s")) >= stopped_at + 5, 30, "the restart to catch up")
    finally:
        stop(third, third_log)
    slots = sent_slots(broker.url, "every-1s")
    assert_consecutive_and_unique(slots, 1.0)
    assert "leading" in third_log.read_text()
