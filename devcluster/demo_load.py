"""The demo's load and its accounting: a producer pod that sends recorded tasks, the live table,
and the summary that counts every task. The formatting and counting here are pure (unit-tested);
demo.py does the I/O.

Every task of the burst is `myapp.tasks.record` with its own number: a worker that runs it appends
the number to a Redis list in the broker, one list per queue and demo run. The producer pod (the
sample app's image, labelled as a producer of the TaskQueue like a web app that sends tasks) sends
the burst, then prints what the lists hold every half second; demo.py reads its last log line.
So "done" counts runs, and a number seen twice is a duplicate, one never seen a lost task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# Runs in the producer pod: argv[1] = {"run": id, "queues": {queue: [tasks, seconds]}}.
PRODUCER_SCRIPT = """
import json, sys, time
import redis
from myproject.celery import app
plan = json.loads(sys.argv[1])
key = lambda queue: "demo:%s:%s" % (plan["run"], queue)
first_send = time.time()
with app.connection_for_write() as connection:
    for queue, (tasks, seconds) in plan["queues"].items():
        for number in range(tasks):
            app.send_task("myapp.tasks.record", args=[key(queue), number, seconds], queue=queue,
                          ignore_result=True, connection=connection)
client = redis.Redis.from_url(app.conf.broker_url)
while True:
    done = {queue: [json.loads(entry)["value"] for entry in client.lrange(key(queue), 0, -1)]
            for queue in plan["queues"]}
    print(json.dumps({"firstSend": first_send, "done": done}), flush=True)
    time.sleep(0.5)
"""


@dataclass(frozen=True)
class QueueLoad:
    name: str
    tasks: int
    seconds: float


def producer_plan(run: str, loads: list[QueueLoad]) -> str:
    return json.dumps({"run": run, "queues": {load.name: [load.tasks, load.seconds] for load in loads}})


@dataclass(frozen=True)
class Progress:
    """The producer's last report: when it sent the first task, and the numbers run per queue."""

    first_send: float
    runs: dict[str, list[int]]

    @classmethod
    def parse(cls, line: str) -> "Progress | None":
        try:
            report = json.loads(line)
            return cls(first_send=float(report["firstSend"]),
                       runs={queue: [int(n) for n in numbers] for queue, numbers in report["done"].items()})
        except (ValueError, KeyError, TypeError):
            return None

    def completed(self, queue: str) -> int:
        return len(set(self.runs.get(queue, [])))

    def duplicated(self, queue: str) -> int:
        numbers = self.runs.get(queue, [])
        return len(numbers) - len(set(numbers))


@dataclass(frozen=True)
class QueueRow:
    name: str
    pending: int
    in_flight: int
    desired: int
    consuming: int
    done: int


def queue_rows(status: dict, progress: Progress | None, queues: list[str]) -> list[QueueRow]:
    """One row per queue from the TaskQueue's status (readyReplicas are consuming workers: the
    pods' readiness gate follows their heartbeats) and the producer's count of runs."""
    by_name = {entry["name"]: entry for entry in status.get("queues", [])}
    return [QueueRow(name=queue,
                     pending=by_name.get(queue, {}).get("pending", 0),
                     in_flight=by_name.get(queue, {}).get("inFlight", 0),
                     desired=by_name.get(queue, {}).get("desiredReplicas", by_name.get(queue, {}).get("replicas", 0)),
                     consuming=by_name.get(queue, {}).get("readyReplicas", 0),
                     done=progress.completed(queue) if progress else 0)
            for queue in queues]


def table(elapsed: float, rows: list[QueueRow]) -> list[str]:
    width = max(len("queue"), *(len(row.name) for row in rows))
    lines = [f"{elapsed:6.1f}s  {'queue':<{width}}  pending  in flight  desired  consuming  done"]
    lines += [f"         {row.name:<{width}}  {row.pending:7}  {row.in_flight:9}  {row.desired:7}  "
              f"{row.consuming:9}  {row.done:4}" for row in rows]
    return lines


@dataclass
class Observed:
    """What the demo saw while the burst ran (wall-clock seconds)."""

    peak_workers: int = 0
    first_scaled_up: float | None = None    # the autoscaled queue's replicas > 0
    first_consuming: float | None = None    # its first worker Ready (consuming)

    def saw(self, now: float, rows: list[QueueRow], autoscaled: str, replicas: int) -> None:
        self.peak_workers = max(self.peak_workers, sum(row.consuming for row in rows))
        row = next(row for row in rows if row.name == autoscaled)
        if replicas and self.first_scaled_up is None:
            self.first_scaled_up = now
        if row.consuming and self.first_consuming is None:
            self.first_consuming = now


@dataclass(frozen=True)
class Summary:
    sent: int
    completed: int
    lost: int
    duplicated: int
    peak_workers: int
    reaction: float | None
    first_consuming: float | None

    def line(self) -> str:
        reaction = f"{self.reaction:.2f}s" if self.reaction is not None else "not seen"
        consuming = f"{self.first_consuming:.2f}s" if self.first_consuming is not None else "not seen"
        return (f"sent {self.sent}, completed {self.completed}, lost {self.lost}, duplicated {self.duplicated}, "
                f"peak workers {self.peak_workers}, reaction {reaction} (first message -> replicas > 0), "
                f"first worker consuming {consuming}")


def summarize(loads: list[QueueLoad], progress: Progress, observed: Observed) -> Summary:
    sent = sum(load.tasks for load in loads)
    completed = sum(len(set(progress.runs.get(load.name, [])) & set(range(load.tasks))) for load in loads)
    return Summary(
        sent=sent, completed=completed, lost=sent - completed,
        duplicated=sum(progress.duplicated(load.name) for load in loads),
        peak_workers=observed.peak_workers,
        reaction=None if observed.first_scaled_up is None else observed.first_scaled_up - progress.first_send,
        first_consuming=None if observed.first_consuming is None else observed.first_consuming - progress.first_send)
