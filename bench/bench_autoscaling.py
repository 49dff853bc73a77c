"""Autoscaling figures on the devcluster with real workers of app/ and a real Redis:

- reaction: burst lands on a queue at zero -> the worker Deployment's spec.replicas rises; p50/p95
  over N trials at the default 2 s poll (KEDA's defaults: 30 s poll plus a 15 s HPA sync), on a
  Redis with keyspace notifications (as the managed Redis runs: the first message wakes the
  scaler) and on one without (the poll alone finds it);
- from zero: first message -> first worker pod Ready, and -> first task done;
- drain: 400 tasks of 200 ms on one queue (maxReplicas 10, concurrency 2) from 0 replicas,
  against the same burst on 10 replicas started beforehand; the ratio of the two drain times,
  with the operator's worker start (--without-mingle --without-gossip) and with Celery's default
  (workers.mingle and workers.gossip true);
- worker start: N workers (10) created at once on a waiting backlog, each pod's creation -> its
  first task done (p50/p95), with both starts, the two alternating over --start-trials runs.

    .venv/bin/python bench/bench_autoscaling.py [--trials 20] [--tasks 400] [--replicas 10] [--drain-only]
    .venv/bin/python bench/bench_autoscaling.py --start-only --start-workers 1 --start-trials 6
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import celery
import kubernetes
import psutil
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import figures  # noqa: E402
from devcluster import build, cluster  # noqa: E402
from tests.helpers.devcluster import DevCluster  # noqa: E402
from tests.helpers.operator import apply_crds, start_operator  # noqa: E402
from tests.helpers.processes import start_redis  # noqa: E402
from tests.helpers.taskqueues import TaskQueues, taskqueue  # noqa: E402
from tests.helpers.waiting import wait_for  # noqa: E402

NAMESPACE = f"bench-{uuid.uuid4().hex[:6]}"  # Service names resolve machine-wide: keep ours unique
OUR_START: dict[str, object] = {}  # the operator's default: --without-mingle --without-gossip
CELERY_START: dict[str, object] = {"mingle": True, "gossip": True}  # Celery's own default start
NOTIFYING = ["--notify-keyspace-events", "Kl"]  # what the managed Redis runs with


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class ReplicaWatch:
    """Timestamps of every change of one Deployment's spec.replicas and status.readyReplicas."""

    def __init__(self, api: kubernetes.client.ApiClient, name: str):
        self.changes: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._apps = kubernetes.client.AppsV1Api(api)
        self._name = name
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            stream = kubernetes.watch.Watch()
            for event in stream.stream(self._apps.list_namespaced_deployment, NAMESPACE,
                                       field_selector=f"metadata.name={self._name}", timeout_seconds=5):
                deployment = event["object"]
                self.changes.append((time.time(), deployment.spec.replicas or 0,
                                     deployment.status.ready_replicas or 0))
                if self._stop.is_set():
                    stream.stop()

    def first_after(self, since: float, check) -> float:
        def found() -> float | None:
            for stamp, replicas, ready in list(self.changes):
                if stamp >= since and check(replicas, ready):
                    return stamp
            return None
        return wait_for(found, 120, "a replica change") - since

    def stop(self) -> None:
        self._stop.set()


def send(url: str, count: int, key: str, seconds: float) -> float:
    producer = celery.Celery(broker=url)
    with producer.connection_for_write() as connection:
        for index in range(count):
            producer.send_task("myapp.tasks.record", args=[key, index, seconds], queue="jobs",
                               connection=connection)
    return time.time()


def drained(url: str, key: str, count: int, since: float) -> float:
    client = redis.Redis.from_url(url)
    wait_for(lambda: client.llen(key) >= count, 600, f"{count} tasks to run", interval=0.02)
    return time.time() - since


def scaled_taskqueue(name: str, url: str, window: int, start: dict[str, object] = OUR_START, **queue: object) -> dict:
    return taskqueue(name, broker={"url": url}, resultBackend={"url": url},
                     queues=[{"name": "jobs", "concurrency": 2, **start, **queue}],
                     autoscaling={"scaleDownStabilizationSeconds": window})


class PodWatch:
    """When this process first saw each pod of one TaskQueue (its creation, within a watch event)."""

    def __init__(self, api: kubernetes.client.ApiClient, instance: str):
        self.first_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._core = kubernetes.client.CoreV1Api(api)
        self._selector = f"app.kubernetes.io/instance={instance}"
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            stream = kubernetes.watch.Watch()
            for event in stream.stream(self._core.list_namespaced_pod, NAMESPACE, label_selector=self._selector,
                                       timeout_seconds=5):
                self.first_seen.setdefault(event["object"].metadata.name, time.time())
                if self._stop.is_set():
                    stream.stop()

    def stop(self) -> None:
        self._stop.set()


def bench_worker_start(tqs: TaskQueues, url: str, start: dict[str, object], name: str,
                       workers: int) -> list[float]:
    """`workers` pods created at once on a waiting backlog: each pod's creation -> its first task done."""
    key = f"{name}-runs"
    send(url, workers * 40, key, 0.05)
    watch = PodWatch(tqs.api_client, name)
    first_done: dict[str, float] = {}
    client = redis.Redis.from_url(url)
    try:
        tqs.apply(scaled_taskqueue(name, url, window=30, start=start, replicas=workers))

        def every_worker_ran_a_task() -> bool:
            for item in client.lrange(key, 0, -1):
                pod = json.loads(item)["hostname"].split("@", 1)[1]
                first_done.setdefault(pod, time.time())
            return len(first_done) >= workers

        wait_for(every_worker_ran_a_task, 300, f"each of {workers} workers to run a task", interval=0.02)
    finally:
        watch.stop()
        tqs.cluster.kubectl("delete", "tq", name, "-n", NAMESPACE, "--wait=true")
        wait_for(lambda: not tqs.core.list_namespaced_pod(
            NAMESPACE, label_selector=f"app.kubernetes.io/instance={name}").items, 180, f"the {name} workers to go")
    return [first_done[pod] - watch.first_seen[pod] for pod in first_done if pod in watch.first_seen]


def bench_reaction(tqs: TaskQueues, url: str, trials: int, name: str) -> list[float]:
    tqs.apply(scaled_taskqueue(name, url, window=0, autoscaling={"maxReplicas": 10}))
    tqs.wait_condition(name, "Autoscaling", "True", timeout=60)
    watch = ReplicaWatch(tqs.api_client, f"{name}-worker-jobs")
    client = redis.Redis.from_url(url)
    results = []
    try:
        for trial in range(trials):
            wait_for(lambda: tqs.deployment(f"{name}-worker-jobs").spec.replicas == 0, 120, "zero replicas")
            # and no worker left at all: one still in its warm shutdown is no queue "at zero"
            wait_for(lambda: not tqs.core.list_namespaced_pod(
                NAMESPACE, label_selector=f"app.kubernetes.io/instance={name}").items, 120, "the workers to go")
            time.sleep((trial % 7) * 0.29)  # land bursts at every phase of the 2 s poll
            landed = send(url, 10, f"{name}-{trial}", 0)
            results.append(watch.first_after(landed, lambda replicas, ready: replicas > 0))
            wait_for(lambda: client.llen(f"{name}-{trial}") == 10, 120, "the burst to drain")
    finally:
        watch.stop()
        tqs.cluster.kubectl("delete", "tq", name, "-n", NAMESPACE, "--wait=true")
    return results


def bench_from_zero(tqs: TaskQueues, url: str) -> tuple[float, float]:
    tqs.apply(scaled_taskqueue("zero", url, window=30, autoscaling={"maxReplicas": 10}))
    tqs.wait_condition("zero", "Autoscaling", "True", timeout=60)
    watch = ReplicaWatch(tqs.api_client, "zero-worker-jobs")
    try:
        landed = send(url, 1, "zero-first", 0)
        ready = watch.first_after(landed, lambda replicas, ready: ready > 0)
        done = drained(url, "zero-first", 1, landed)
    finally:
        watch.stop()
        tqs.cluster.kubectl("delete", "tq", "zero", "-n", NAMESPACE, "--wait=true")
    return ready, done


def bench_warm_drain(tqs: TaskQueues, url: str, tasks: int, replicas: int) -> float:
    """The burst on `replicas` workers that consume already (Ready = consuming: the readiness gate)."""
    tqs.apply(scaled_taskqueue("warm", url, window=30, replicas=replicas))
    wait_for(lambda: (d := tqs.deployment("warm-worker-jobs")) and d.status.ready_replicas == replicas, 180,
             f"{replicas} warm workers")
    warm = drained(url, "drain-warm", tasks, send(url, tasks, "drain-warm", 0.2))
    tqs.cluster.kubectl("delete", "tq", "warm", "-n", NAMESPACE, "--wait=true")
    wait_for(lambda: not tqs.core.list_namespaced_pod(
        NAMESPACE, label_selector="app.kubernetes.io/instance=warm").items, 180, "the warm workers to go")
    return warm


def bench_cold_drain(tqs: TaskQueues, url: str, tasks: int, replicas: int, start: dict[str, object],
                     name: str) -> tuple[float, dict[str, float]]:
    """The same burst on the same Redis from zero workers; and the CPU the machine spent meanwhile
    (a worker's start is CPU-bound)."""
    tqs.apply(scaled_taskqueue(name, url, window=30, start=start, autoscaling={"maxReplicas": replicas}))
    tqs.wait_condition(name, "Autoscaling", "True", timeout=60)
    before = cpu_seconds_by_kind()
    cold = drained(url, f"drain-{name}", tasks, send(url, tasks, f"drain-{name}", 0.2))
    after = cpu_seconds_by_kind()
    tqs.cluster.kubectl("delete", "tq", name, "-n", NAMESPACE, "--wait=true")
    wait_for(lambda: not tqs.core.list_namespaced_pod(
        NAMESPACE, label_selector=f"app.kubernetes.io/instance={name}").items, 180, f"the {name} workers to go")
    return cold, {kind: after[kind] - before.get(kind, 0.0) for kind in after}


def cpu_seconds_by_kind() -> dict[str, float]:
    """CPU time so far of every process on the machine: the Celery workers' and everything else's."""
    totals = {"celery workers": 0.0, "everything else": 0.0}
    for process in psutil.process_iter(["cmdline", "cpu_times"]):
        times, cmdline = process.info["cpu_times"], " ".join(process.info["cmdline"] or [])
        if times is None:
            continue
        kind = "celery workers" if " worker -Q " in cmdline else "everything else"
        totals[kind] += times.user + times.system
    return totals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--replicas", type=int, default=10, help="workers of the drain (maxReplicas from zero)")
    parser.add_argument("--drain-only", action="store_true", help="skip the reaction and from-zero figures")
    parser.add_argument("--start-only", action="store_true", help="only the worker-start figures")
    parser.add_argument("--start-workers", type=int, default=10, help="pods started at once per worker-start run")
    parser.add_argument("--start-trials", type=int, default=1, help="worker-start runs per start")
    figures.add_argument(parser)
    args = parser.parse_args()
    headline: list[figures.Figure] = []

    workdir = Path(tempfile.mkdtemp(prefix="bench-autoscaling-"))
    cluster.up(workdir / "cluster")
    devcluster = DevCluster(dir=(workdir / "cluster").resolve(), bin_dir=build.bin_dir())
    # on the host's address on the cluster's bridge: the worker pods reach them there
    redis_server = start_redis(workdir / "redis", extra_args=NOTIFYING, host=devcluster.host_ip)
    silent_redis = start_redis(workdir / "silent-redis", host=devcluster.host_ip)
    operator = None
    try:
        apply_crds(devcluster)
        devcluster.kubectl("create", "namespace", NAMESPACE)
        operator = start_operator(devcluster, workdir / "operator.log", extra_env={
            "CELERY_OPERATOR_RESYNC_SECONDS": "10"})
        tqs = TaskQueues(devcluster, NAMESPACE)
        if not args.drain_only and not args.start_only:
            reaction = bench_reaction(tqs, redis_server.url, args.trials, "woken")
            polled = bench_reaction(tqs, silent_redis.url, args.trials, "polled")
            zero_ready, zero_done = bench_from_zero(tqs, redis_server.url)
        starts: dict[str, list[float]] = {"ours": [], "Celery's default": []}
        for trial in range(args.start_trials):  # the two starts alternate, so load drifts hit both alike
            for label, start, name in (("ours", OUR_START, "startours"),
                                       ("Celery's default", CELERY_START, "startcelery")):
                starts[label] += bench_worker_start(tqs, redis_server.url, start, f"{name}{trial}",
                                                    args.start_workers)
        colds = {}
        if not args.start_only:
            warm = bench_warm_drain(tqs, redis_server.url, args.tasks, args.replicas)
            for label, start, name in (("ours", OUR_START, "coldours"),
                                       ("Celery's default", CELERY_START, "coldcelery")):
                colds[label] = bench_cold_drain(tqs, redis_server.url, args.tasks, args.replicas, start, name)
    finally:
        if operator is not None:
            operator.stop()
        redis_server.stop()
        silent_redis.stop()
        cluster.down(workdir / "cluster")

    print(f"{'figure':<58} {'value':>10}")
    if not args.drain_only and not args.start_only:
        for label, times in (("woken by the first message", reaction), ("poll only, no notifications", polled)):
            print(f"{'reaction p50, ' + label:<58} {statistics.median(times):>9.2f}s")
            print(f"{'reaction p95 (' + str(len(times)) + ' trials), ' + label:<58} "
                  f"{percentile(times, 0.95):>9.2f}s")
            print(f"{'reaction max, ' + label:<58} {max(times):>9.2f}s")
            headline += [
                figures.Figure(f"reaction p50, {label}", statistics.median(times), "s"),
                figures.at_most(f"reaction p95 ({len(times)} trials), {label}", percentile(times, 0.95), "s", 2.5),
            ]
        print(f"{'from zero: first message -> first worker pod Ready':<58} {zero_ready:>9.2f}s")
        print(f"{'from zero: first message -> first task done':<58} {zero_done:>9.2f}s")
        headline.append(figures.Figure("from zero: first message → first task done", zero_done, "s"))
    for label, times in starts.items():
        print(f"{'worker start ' + label + ': pod created -> first task, p50':<58} {statistics.median(times):>9.2f}s")
        print(f"{'worker start ' + label + ': p95 (' + str(len(times)) + ' pods)':<58} "
              f"{percentile(times, 0.95):>9.2f}s")
        headline.append(figures.Figure(f"worker start, {args.start_workers} at once, {label}: pod created → "
                                       "first task, p50", statistics.median(times), "s"))
    if colds:
        print(f"{f'drain {args.tasks} x 200 ms, {args.replicas} replicas consuming beforehand':<58} {warm:>9.2f}s")
    cores = psutil.cpu_count() or 1
    for label, (cold, cold_cpu) in colds.items():
        print(f"{f'drain from 0 replicas (max {args.replicas}), start ' + label:<58} {cold:>9.2f}s")
        print(f"{'drain ratio (from zero / warm), start ' + label:<58} {cold / warm:>10.2f}")
        ratio = (f"drain {args.tasks} × 200 ms, from 0 replicas (max {args.replicas}) ÷ on {args.replicas} "
                 f"consuming beforehand, start {label}")
        headline.append(figures.at_most(ratio, cold / warm, "", 1.5) if label == "ours"
                        else figures.Figure(ratio, cold / warm, ""))
        for kind, seconds in cold_cpu.items():
            print(f"{'  from-zero drain: CPU used by ' + kind:<58} {seconds:>9.2f}s")
        print(f"{'  from-zero drain: CPU the machine had (' + str(cores) + ' cores x wall)':<58} {cores * cold:>9.2f}s")
    if not args.drain_only and not args.start_only:
        print(json.dumps({"reaction woken": [round(r, 3) for r in reaction],
                          "reaction polled": [round(r, 3) for r in polled]}))
    figures.report(args.figures, headline)


if __name__ == "__main__":
    main()
