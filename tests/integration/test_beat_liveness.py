"""The beat's liveness check against a real, password-protected Redis: `GET /healthz` answers 200
while the loop goes round, still 200 while Redis is down (the loop keeps going round, failing and
backing off), 503 once the loop is wedged in a send that does not return, and nothing at all from
a process frozen with SIGSTOP (what the kubelet's probe times out on)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_operator import naming
from celery_operator.beat.health import HealthServer, Liveness
from celery_operator.beat.jobs import encode_entry, job_entry
from celery_operator.beat.runner import Beat
from celery_operator.beat.state import BeatStateStore, BeatStore, StateLocation
from celery_operator.models import PeriodicJobSpec
from devcluster.ports import free_port

from tests.helpers.brokers import RedisBroker
from tests.helpers.processes import REPO_ROOT, log_tail, stop_process
from tests.helpers.waiting import holds_for, wait_for

pytestmark = pytest.mark.integration

NAMESPACE, TASKQUEUE = "liveness-ns", "shop"
PREFIX = naming.beat_key_prefix(NAMESPACE, TASKQUEUE)
ALLOWANCE = 2.0  # shorter than the beat's 10 s, so a wedge shows quickly; still above a failing round


def put_job(url: str, name: str, interval: str = "1s") -> None:
    """A job entry written the way the operator writes it, in effect from now."""
    spec = PeriodicJobSpec.parse({"taskQueueRef": {"name": TASKQUEUE}, "task": "myapp.tasks.record",
                                  "interval": interval, "args": [name], "queue": "liveness-it"})
    entry = encode_entry(job_entry(spec, uid=f"uid-{name}", generation=1, task_queue_uid="tq-uid", previous=None,
                                   now=time.time()))
    store = BeatStateStore()
    try:
        assert store.write_jobs(StateLocation(url, PREFIX), {name: (None, entry)}, {}) == []
    finally:
        store.close()


def healthz(port: int, timeout: float = 2.0) -> tuple[int, str]:
    """(status, body) of GET /healthz, as the kubelet's httpGet probe asks it."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class GatedSender:
    """The beat's send hook: records each run, and blocks inside the send while the gate is closed
    (a send that never returns, the way a wedged broker client would hold the loop)."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.blocked = threading.Event()

    def __call__(self, job: Any, slot: float, identifier: str) -> None:
        if not self.gate.is_set():
            self.blocked.set()
            self.gate.wait()
        self.sent.append(identifier)


@pytest.fixture
def running_beat(redis_broker: RedisBroker) -> Iterator[tuple[Beat, GatedSender, int]]:
    """A beat going round in a thread, its liveness served on a free port."""
    put_job(redis_broker.url, "every-1s")
    sender = GatedSender()
    liveness = Liveness(allowance=ALLOWANCE)
    beat = Beat(BeatStore(StateLocation(redis_broker.url, PREFIX)), sender, namespace=NAMESPACE, liveness=liveness)
    server = HealthServer(liveness, 0, "127.0.0.1").start()
    stop = threading.Event()
    loop = threading.Thread(target=beat.run, args=(stop,), daemon=True)
    loop.start()
    try:
        yield beat, sender, server.port
    finally:
        stop.set()
        sender.gate.set()
        loop.join(timeout=10)
        server.stop()
        beat.store.close()


def test_live_while_going_round_even_with_redis_down_and_wedged_when_a_send_hangs(
        running_beat: tuple[Beat, GatedSender, int], redis_broker: RedisBroker) -> None:
    beat, sender, port = running_beat
    wait_for(lambda: len(sender.sent) >= 2, 15, "two runs sent")
    status, body = healthz(port)
    assert (status, body) == (200, "ok: the beat's loop goes round\n")

    # Redis down: every round fails at once and the backoff climbs 0.5, 1, 2, 4, 5 s. That is a
    # loop going round, not a wedged one: 200 throughout, though the waits outgrow the allowance.
    redis_broker.stop()
    holds_for(lambda: healthz(port)[0] == 200, 14, "200 while Redis is down")
    redis_broker.start()
    put_job(redis_broker.url, "every-1s")  # that Redis keeps nothing; the operator would rewrite it so
    sent_before = len(sender.sent)
    wait_for(lambda: len(sender.sent) > sent_before, 20, "runs again once Redis is back")
    assert healthz(port)[0] == 200

    # A send that does not return: the loop stops going round; once it is ALLOWANCE overdue, 503.
    sender.gate.clear()
    assert sender.blocked.wait(10), "the next send entered the gate"
    blocked_at = time.monotonic()
    status, body = wait_for(lambda: (answer := healthz(port))[0] == 503 and answer, ALLOWANCE + 5, "503")
    assert time.monotonic() - blocked_at >= ALLOWANCE - 0.6, "not before the allowance is spent"
    assert body.startswith("wedged: the beat's loop is ") and "s overdue (allowed 2 s)" in body, body
    assert healthz(port)[0] == 503, "and it stays so while the send hangs"

    sender.gate.set()
    wait_for(lambda: healthz(port)[0] == 200, 5, "200 once the loop goes round again")
    assert beat.leading


def test_a_frozen_beat_process_answers_nothing(redis_broker: RedisBroker, tmp_path: Path) -> None:
    """`python -m celery_operator.beat --health-port N` as the pod runs it; SIGSTOP freezes the
    health thread with the loop, so the probe gets no answer at all (connected, then timed out)."""
    put_job(redis_broker.url, "every-1s")
    port, log = free_port(), tmp_path / "beat.log"
    env = dict(os.environ, CELERY_BROKER_URL=redis_broker.url, CELERY_OPERATOR_BEAT_STATE_URL=redis_broker.url,
               CELERY_OPERATOR_BEAT_KEY_PREFIX=PREFIX, CELERY_OPERATOR_BEAT_INSTANCE="frozen", PYTHONUNBUFFERED="1")
    with log.open("ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "celery_operator.beat", "--health-port", str(port)],
                                   cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_for(lambda: "sent every-1s run" in log.read_text(), 30, "the beat to send")
        assert healthz(port)[0] == 200, log_tail(log)
        assert f"liveness: GET /healthz on port {port}" in log.read_text()

        process.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises((TimeoutError, urllib.error.URLError)):
            healthz(port, timeout=2.0)
        assert time.monotonic() - started >= 1.9, "the probe waited its whole timeout: no answer, no refusal"

        process.send_signal(signal.SIGCONT)
        wait_for(lambda: healthz(port)[0] == 200, 10, "200 once thawed")
    finally:
        process.send_signal(signal.SIGCONT)
        assert stop_process(process, grace=10) == 0, log_tail(log)
    assert "stopped" in log.read_text()


def test_a_taken_health_port_is_an_error_that_names_it(redis_broker: RedisBroker, tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, CELERY_BROKER_URL=redis_broker.url, CELERY_OPERATOR_BEAT_STATE_URL=redis_broker.url,
               CELERY_OPERATOR_BEAT_KEY_PREFIX=PREFIX)
    taken = HealthServer(Liveness(), port).start()
    try:
        result = subprocess.run([sys.executable, "-m", "celery_operator.beat", "--health-port", str(port)],
                                cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    finally:
        taken.stop()
    assert result.returncode == 2
    assert f"cannot serve the liveness check on port {port}" in result.stdout
