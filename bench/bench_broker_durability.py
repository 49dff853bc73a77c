"""What the durable managed broker costs: write throughput with and without Redis' append-only file,
and how long producers get errors while the broker restarts.

- throughput: Celery's producer sending task messages (send_task, one connection) into two
  redis-servers on the host, side by side and interleaved trial by trial: `--appendonly no` (the
  ephemeral broker) and `--appendonly yes --appendfsync everysec` (the durable default), both without
  RDB snapshots;
- restart downtime: a devcluster of its own (1 node), the operator on the host, a TaskQueue with the
  default durable broker, and a producer pushing a message every 20 ms through the broker's Service;
  the broker pod deleted, then redis-server SIGKILLed in its container, `--restarts` times each. The
  downtime is from the first refused push to the next accepted one; after each restart the list
  holds every accepted push (counted: lost).

    .venv/bin/python bench/bench_broker_durability.py [--messages 20000] [--trials 3] [--restarts 5]
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import celery  # noqa: E402
import redis  # noqa: E402

from bench import figures  # noqa: E402
from tests.helpers import containers  # noqa: E402
from tests.helpers.devcluster import own_cluster  # noqa: E402
from tests.helpers.operator import apply_crds, start_operator  # noqa: E402
from tests.helpers.processes import start_redis  # noqa: E402
from tests.helpers.pushers import Pusher, missing  # noqa: E402
from tests.helpers.taskqueues import TaskQueues, taskqueue  # noqa: E402
from tests.helpers.waiting import wait_for  # noqa: E402

NAMESPACE, NAME, KEY = "bench", "durable", "pushes"
PUSH_EVERY = 0.02


def send_rate(url: str, messages: int) -> float:
    app = celery.Celery("bench", broker=url)
    try:
        with app.connection_for_write() as connection:
            started = time.perf_counter()
            for number in range(messages):
                app.send_task("myapp.tasks.record", args=["bench", number], queue="jobs", connection=connection,
                              ignore_result=True)
            return messages / (time.perf_counter() - started)
    finally:
        app.close()


def throughput(messages: int, trials: int, workdir: Path) -> dict[str, list[float]]:
    servers = {"in memory": start_redis(workdir / "memory", extra_args=["--save", ""]),
               "append-only, fsync every second": start_redis(
                   workdir / "aof", extra_args=["--save", "", "--appendonly", "yes", "--appendfsync", "everysec"])}
    rates: dict[str, list[float]] = {name: [] for name in servers}
    try:
        for _ in range(trials):
            for name, server in servers.items():
                with redis.Redis.from_url(server.url) as client:
                    client.flushall()
                rates[name].append(send_rate(server.url, messages))
    finally:
        for server in servers.values():
            server.stop()
    return rates


def broker_pod(tqs: TaskQueues) -> object:
    pods = [p for p in tqs.core.list_namespaced_pod(
        NAMESPACE, label_selector=f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=broker").items
        if p.metadata.deletion_timestamp is None and p.status.phase == "Running"
        and all(s.ready for s in p.status.container_statuses or [])]
    return pods[0] if len(pods) == 1 else None


def restarts(count: int, workdir: Path) -> tuple[dict[str, list[float]], int]:
    """Downtime of each restart by kind, and the accepted pushes the broker no longer held."""
    downtime: dict[str, list[float]] = {"pod deleted": [], "redis-server SIGKILLed": []}
    lost = 0
    with own_cluster(workdir / "cluster", nodes=1) as handle:
        apply_crds(handle)
        handle.kubectl("create", "namespace", NAMESPACE)
        operator = start_operator(handle, workdir / "operator.log")
        tqs = TaskQueues(handle, NAMESPACE)
        try:
            tqs.apply(taskqueue(NAME, queues=[{"name": "jobs", "replicas": 0}]))
            tqs.wait_condition(NAME, "BrokerReady", "True", timeout=240)
            secret = tqs.core.read_namespaced_secret(f"{NAME}-broker", NAMESPACE)
            url = base64.b64decode(secret.data["url"]).decode()
            pusher = Pusher(url, KEY, every=PUSH_EVERY)
            try:
                for trial in range(count):
                    for kind in downtime:
                        pod = wait_for(lambda: broker_pod(tqs), 120, "one ready broker pod")
                        outages = len(pusher.outages)
                        time.sleep(1)
                        if kind == "pod deleted":
                            tqs.core.delete_namespaced_pod(pod.metadata.name, NAMESPACE)
                        else:
                            os.kill(containers.host_pid(pod.status.container_statuses[0].container_id),
                                    signal.SIGKILL)
                        wait_for(lambda: len(pusher.outages) > outages, 180, f"the pushes to resume ({kind})")
                        refused, resumed = pusher.outages[-1]
                        downtime[kind].append(resumed - refused)
                        time.sleep(1)
                        acknowledged, held = pusher.held(url)
                        gone = missing(acknowledged, held)
                        lost = max(lost, len(gone))
                        print(f"restart {trial + 1} ({kind}): producers refused for {resumed - refused:.2f} s; "
                              f"{len(acknowledged)} acknowledged, {len(gone)} of them lost", flush=True)
            finally:
                pusher.stop()
        finally:
            tqs.close()
            operator.stop()
    return downtime, lost


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--restarts", type=int, default=5)
    figures.add_argument(parser)
    args = parser.parse_args()
    headline: list[figures.Figure] = []
    with tempfile.TemporaryDirectory(prefix="bench-durable-") as scratch:
        rates = throughput(args.messages, args.trials, Path(scratch))
        print(f"\n| broker | messages/s, {args.trials} trials of {args.messages} (median) |")
        print("|---|---|")
        for name, values in rates.items():
            print(f"| {name} | {statistics.median(values):,.0f} ({', '.join(f'{v:,.0f}' for v in values)}) |")
        memory, aof = (statistics.median(values) for values in rates.values())
        print(f"append-only / in memory: {aof / memory:.2f}")
        headline += [figures.Figure("send_task rate, durable broker / in-memory broker", round(aof / memory, 2), "")]
        downtime, lost = restarts(args.restarts, Path(scratch))
    print("\n| restart | trials | producers refused p50 / p95 |")
    print("|---|---|---|")
    for kind, values in downtime.items():
        print(f"| {kind} | {len(values)} | {figures.percentile(values, 0.5):.2f} s / {figures.percentile(values, 0.95):.2f} s |")
        headline.append(figures.Figure(f"durable broker restart, {kind}: producers refused, p95",
                                       round(figures.percentile(values, 0.95), 2), "s"))
    print(f"acknowledged pushes the broker no longer held after a restart (most in one): {lost}")
    headline.append(figures.exactly("durable broker restarts: accepted messages lost", lost, "", 0))
    figures.report(args.figures, headline)


if __name__ == "__main__":
    main()
