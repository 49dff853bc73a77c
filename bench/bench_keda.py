"""KEDA and celery-operator side by side: the same Redis, the same worker pod template, the same
workload, one run on one devcluster.

Three contenders scale one queue each, at the same time, on a cluster of their own (one real node):
- `keda-default`: a Deployment scaled by a ScaledObject with KEDA's Redis-list scaler on its queue and
  KEDA's defaults (pollingInterval 30 s, cooldownPeriod 300 s, the HPA's 300 s scale-down window);
- `keda-tuned`: the same, tuned as a careful user would (pollingInterval 2 s, cooldownPeriod 60 s, HPA
  scale-down stabilization 60 s);
- `ours`: an autoscaled queue of a TaskQueue with the operator's defaults (poll 2 s, window 60 s).
KEDA v2.21 runs from the image built here (devcluster/keda.py) with its own config/; the HPA reads its
external metrics through the API server's aggregation layer. The operator runs from the chart (one
replica, its ServiceAccount, so the audit log tells its requests apart, the chart's 10 s resync). The
Redis on the host runs with keyspace notifications, as the operator configures its managed Redis (the
first message on a queue at zero wakes our scaler; KEDA polls either way).

The pod template is the operator's own worker Deployment of that queue (the TaskQueue lists the KEDA
queues with replicas 0 only to have it built): copied with other labels, so the operator leaves its
pods alone, and without the operator's readiness gate, which nothing would set for KEDA's pods. Every
contender: concurrency 2, at most 4 replicas, target 2 messages per replica (KEDA's listLength),
terminationGracePeriodSeconds 10; the tasks are `myapp.tasks.record` (a number, a duration), each
recording its run in a Redis list, so every task is accounted for.

Scenarios (every contender in each, side by side):
- first message on a queue at zero → replicas > 0 (reaction) and → its task done;
- drain: N tasks of 200 ms on a queue at zero: reaction, and time until all are done;
- busy: a burst on a queue already running a long task on one replica → replicas rise above it;
- scale-down safety: 2 tasks of 100 s each (longer than the 10 s grace period) on a queue at zero,
  with Celery's early ack and with `acks_late`: completed, interrupted, lost, awaiting redelivery;
- priorities: N tasks sent with priority 9 (kombu's list `<queue>\\x06\\x169`): peak replicas and tasks
  done within a window, against the same burst without priorities;
- idle: broker commands (Redis MONITOR, by client address) and Kubernetes API requests (audit log, by
  user) per minute with nothing to do.
Between scenarios every contender is brought back to zero, its queue purged: KEDA's by recreating its
ScaledObject on a Deployment at zero (a fresh install; waiting out the defaults' 300 s cooldown would
only add time), ours by setting its window to 0 s until it is at zero and then back to its default.

    .venv/bin/python bench/bench_keda.py [--quick] [--trials 5] [--write-docs]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import re
import statistics
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import celery  # noqa: E402
import kubernetes  # noqa: E402
import redis  # noqa: E402

from bench import figures, runner  # noqa: E402
from devcluster import build, keda, keda_deploy  # noqa: E402
from tests.helpers import operator_ha  # noqa: E402
from tests.helpers.devcluster import DevCluster, own_cluster  # noqa: E402
from tests.helpers.processes import RedisServer, start_redis  # noqa: E402
from tests.helpers.taskqueues import TaskQueues, taskqueue  # noqa: E402
from tests.helpers.waiting import wait_for  # noqa: E402

NAMESPACE = "race"
MAX_REPLICAS, CONCURRENCY, GRACE_SECONDS = 4, 2, 10
LONG_TASK_SECONDS = 100  # outlasts keda-tuned's 60 s cooldown plus the grace period
PRIORITY_SEP = "\x06\x16"  # kombu's Redis priority lists: <queue>\x06\x16<step>
PRIORITY_STEPS = (3, 6, 9)
# KEDA's operator and metrics server share one ServiceAccount; the HPA controller reads the metrics
KEDA_USERS = ("system:serviceaccount:keda:keda-operator", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")
OUR_USER = operator_ha.SERVICE_ACCOUNT
DOCS = ROOT / "docs" / "benchmarks.md"
DOCS_START, DOCS_END = "<!-- bench:keda:start -->", "<!-- bench:keda:end -->"


# --- the contenders (pure) ----------------------------------------------------------------------

@dataclass(frozen=True)
class Contender:
    name: str
    queue: str  # the Celery queue it scales
    keda: dict[str, Any] | None  # the ScaledObject's settings beyond the trigger; None = ours

    @property
    def is_keda(self) -> bool:
        return self.keda is not None


KEDA_TUNED = {"pollingInterval": 2, "cooldownPeriod": 60,
              "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {
                  "stabilizationWindowSeconds": 60}}}}}


def contenders(variant: str) -> list[Contender]:
    """The three of one TaskQueue variant ("early": Celery's default ack, "late": acks_late)."""
    return [Contender(f"keda-default-{variant}", f"keda_default_{variant}", {}),
            Contender(f"keda-tuned-{variant}", f"keda_tuned_{variant}", KEDA_TUNED),
            Contender(f"ours-{variant}", f"ours_{variant}", None)]


def kind_of(contender: Contender) -> str:
    """The contender's column: keda-default, keda-tuned or ours."""
    return contender.name.rsplit("-", 1)[0]


def worker_deployment_name(taskqueue_name: str, contender: Contender) -> str:
    """The operator's worker Deployment of the contender's queue (ours scales; KEDA's are templates)."""
    return f"{taskqueue_name}-worker-{contender.queue.replace('_', '-')}"


def keda_deployment_name(contender: Contender) -> str:
    return f"{contender.name}-workers"


def bench_taskqueue(name: str, url: str, variant: str, env: list[dict[str, str]]) -> dict[str, Any]:
    queues = []
    for contender in contenders(variant):
        queue: dict[str, Any] = {"name": contender.queue, "concurrency": CONCURRENCY,
                                 "terminationGracePeriodSeconds": GRACE_SECONDS}
        if contender.is_keda:
            queue["replicas"] = 0  # only for its template
        else:
            queue["autoscaling"] = {"maxReplicas": MAX_REPLICAS}
        queues.append(queue)
    return taskqueue(name, broker={"url": url}, env=env, queues=queues)


def keda_deployment(template: dict[str, Any], contender: Contender) -> dict[str, Any]:
    """A Deployment at zero for KEDA to scale, running the operator's pod template of the queue, with
    labels the operator does not watch and without its readiness gate."""
    pod = copy.deepcopy(template["spec"]["template"])
    labels = {"app.kubernetes.io/name": "keda-bench", "app.kubernetes.io/instance": contender.name}
    pod["metadata"] = {"labels": labels, "annotations": pod.get("metadata", {}).get("annotations", {})}
    pod["spec"].pop("readinessGates", None)
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": keda_deployment_name(contender), "labels": labels},
            "spec": {"replicas": 0, "selector": {"matchLabels": labels}, "template": pod}}


def scaled_object(contender: Contender, redis_address: str) -> dict[str, Any]:
    """KEDA's Redis-list scaler on the contender's queue: one replica per CONCURRENCY messages."""
    assert contender.keda is not None
    trigger = {"type": "redis", "metadata": {"address": redis_address, "listName": contender.queue,
                                             "listLength": str(CONCURRENCY)}}
    spec = {"scaleTargetRef": {"name": keda_deployment_name(contender)}, "minReplicaCount": 0,
            "maxReplicaCount": MAX_REPLICAS, "triggers": [trigger], **copy.deepcopy(contender.keda)}
    return {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": contender.name}, "spec": spec}


def deployment_of(taskqueue_name: str, contender: Contender) -> str:
    return keda_deployment_name(contender) if contender.is_keda else worker_deployment_name(taskqueue_name, contender)


# --- outcomes (pure) ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    """What became of the long tasks of the scale-down scenario."""

    sent: int
    completed: int  # distinct tasks that ran to the end
    runs: int  # every recorded run (a redelivered task that ran again counts twice)
    waiting: int  # messages back in the queue or in kombu's unacked hash: will run again

    @property
    def interrupted(self) -> int:
        return self.sent - self.completed

    @property
    def lost(self) -> int:
        """Interrupted and in no broker structure: gone for good."""
        return max(0, self.interrupted - self.waiting)

    @property
    def redelivered(self) -> int:
        return self.runs - self.completed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def medians(samples: dict[str, list[float]]) -> dict[str, float | None]:
    return {name: statistics.median(values) if values else None for name, values in samples.items()}


def p50_p95(values: list[float], missed: int = 0, window: float | None = None) -> str:
    """p50 / p95 of what happened, and how many trials saw nothing happen within `window`."""
    if not values:
        return f"none within {window:.0f} s" if missed and window else NOT_MEASURED
    cell = f"{percentile(values, 0.5):.2f} / {percentile(values, 0.95):.2f} s"
    return cell + (f" ({missed} trials: none within {window:.0f} s)" if missed and window else "")


# --- tables (pure) ------------------------------------------------------------------------------

COLUMNS = ("keda-default", "keda-tuned", "ours")
NOT_MEASURED = "not measured"


@dataclass
class Table:
    title: str
    rows: list[tuple[str, dict[str, str], str]] = field(default_factory=list)  # figure, cells, ratio

    def add(self, figure: str, cells: dict[str, str], ratio: str = "") -> None:
        self.rows.append((figure, cells, ratio))

    def unmeasured(self) -> list[str]:
        return [f"{self.title}: {figure} / {column}" for figure, cells, _ in self.rows
                for column in COLUMNS if cells.get(column, NOT_MEASURED) == NOT_MEASURED]

    def markdown(self) -> str:
        lines = [f"**{self.title}**", "",
                 "| figure | " + " | ".join(COLUMNS) + " | KEDA ÷ ours (default / tuned) |",
                 "|---|" + "---|" * (len(COLUMNS) + 1)]
        for figure, cells, ratio in self.rows:
            lines.append(f"| {figure} | " + " | ".join(cells.get(c, NOT_MEASURED) for c in COLUMNS) + f" | {ratio} |")
        return "\n".join(lines)


def ratio(keda_values: dict[str, float | None], ours: float | None) -> str:
    """KEDA's figure over ours, for the default and the tuned contender."""
    parts = []
    for column in ("keda-default", "keda-tuned"):
        value = keda_values.get(column)
        parts.append("—" if value is None or not ours else f"{value / ours:.2g}×" if value < ours else
                     f"{value / ours:.1f}×")
    return " / ".join(parts)


def seconds_cell(value: float | None, window: float | None = None) -> str:
    if value is None:
        return f"none within {window:.0f} s" if window else NOT_MEASURED
    return f"{value:.2f} s"


def replace_section(document: str, section: str) -> str:
    """`document` with the text between the bench's markers replaced (appended when absent)."""
    block = f"{DOCS_START}\n{section.strip()}\n{DOCS_END}"
    pattern = re.compile(re.escape(DOCS_START) + ".*?" + re.escape(DOCS_END), re.S)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document)
    return document.rstrip("\n") + "\n\n## KEDA side by side (`bench/bench_keda.py`)\n\n" + block + "\n"


# --- the run's I/O ------------------------------------------------------------------------------

class Deployments:
    """Every change of spec.replicas and readyReplicas of the namespace's Deployments, timestamped."""

    def __init__(self, api: kubernetes.client.ApiClient):
        self.changes: list[tuple[float, str, int, int]] = []
        self._apps = kubernetes.client.AppsV1Api(api)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a watch that ends or breaks is restarted
                for event in kubernetes.watch.Watch().stream(self._apps.list_namespaced_deployment, NAMESPACE,
                                                             timeout_seconds=10):
                    item = event["object"]
                    self.changes.append((time.time(), item.metadata.name, item.spec.replicas or 0,
                                         item.status.ready_replicas or 0))
                    if self._stop.is_set():
                        return

    def replicas(self, name: str) -> int:
        return self._apps.read_namespaced_deployment(name, NAMESPACE).spec.replicas or 0

    def first(self, name: str, since: float, check: Callable[[int], bool]) -> float | None:
        for stamp, deployment, replicas, _ in list(self.changes):
            if deployment == name and stamp >= since and check(replicas):
                return stamp - since
        return None

    def peak(self, name: str, since: float, until: float) -> int:
        return max((r for stamp, d, r, _ in list(self.changes) if d == name and since <= stamp <= until), default=0)

    def stop(self) -> None:
        self._stop.set()


class Race:
    """The cluster, the broker and the contenders of one run."""

    def __init__(self, cluster: DevCluster, broker: RedisServer):
        self.cluster = cluster
        self.broker = broker
        self.api = cluster.api_client()
        self.custom = kubernetes.client.CustomObjectsApi(self.api)
        self.apps = kubernetes.client.AppsV1Api(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.redis = redis.Redis.from_url(broker.url)
        self.producer = celery.Celery(broker=broker.url)
        self.watch = Deployments(self.api)
        self.taskqueue_of: dict[str, str] = {}

    # set-up

    def start(self, variants: dict[str, list[dict[str, str]]]) -> None:
        tqs = TaskQueues(self.cluster, NAMESPACE)
        try:
            for variant, env in variants.items():
                name = f"race-{variant}"
                tqs.apply(bench_taskqueue(name, self.broker.url, variant, env))
                for contender in contenders(variant):
                    self.taskqueue_of[contender.name] = name
                for contender in contenders(variant):
                    wait_for(lambda c=contender: tqs.deployment(worker_deployment_name(name, c)), 120,
                             f"the operator's Deployment for {contender.queue}")
                    if contender.is_keda:
                        template = self.api.sanitize_for_serialization(
                            tqs.deployment(worker_deployment_name(name, contender)))
                        self.cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-",
                                             input=json.dumps(keda_deployment(template, contender)))
                        self.apply_scaled_object(contender)
        finally:
            tqs.close()

    def deployment(self, contender: Contender) -> str:
        return deployment_of(self.taskqueue_of[contender.name], contender)

    def apply_scaled_object(self, contender: Contender) -> None:
        address = f"{self.broker.host}:{self.broker.port}"
        self.cluster.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(scaled_object(contender, address)))
        wait_for(lambda: self._scaled_object_ready(contender), 120, f"ScaledObject {contender.name} Ready")

    def _scaled_object_ready(self, contender: Contender) -> bool:
        body = self.custom.get_namespaced_custom_object("keda.sh", "v1alpha1", NAMESPACE, "scaledobjects",
                                                        contender.name)
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in body.get("status", {}).get("conditions", []))

    def delete_scaled_object(self, contender: Contender) -> None:
        self.cluster.kubectl("delete", "scaledobject", "-n", NAMESPACE, contender.name, "--wait=true",
                             "--ignore-not-found", timeout=120)

    # the workload

    def purge(self, contender: Contender) -> None:
        """The queue's messages gone: its lists, and what kombu keeps in `unacked` for it (a worker
        stopped while it held reserved messages leaves them there until the visibility timeout)."""
        queue = contender.queue
        with self.redis.pipeline() as pipe:
            pipe.delete(queue, *(f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS))
            for tag, value in self.redis.hgetall("unacked").items():
                if json.loads(value)[2] == queue:
                    pipe.hdel("unacked", tag).zrem("unacked_index", tag)
            pipe.execute()

    def send(self, contenders_: list[Contender], key: str, count: int, seconds: float,
             priority: int | None = None) -> float:
        """`count` record tasks to each contender's queue, interleaved so that none gets a head start;
        the time of the first send."""
        options = {} if priority is None else {"priority": priority}
        first = time.time()
        with self.producer.connection_for_write() as connection:
            for number in range(count):
                for contender in contenders_:
                    self.producer.send_task("myapp.tasks.record", args=[f"{key}:{contender.name}", number, seconds],
                                            queue=contender.queue, connection=connection, ignore_result=True,
                                            **options)
        return first

    def runs(self, key: str, contender: Contender) -> list[int]:
        return [json.loads(entry)["value"] for entry in self.redis.lrange(f"{key}:{contender.name}", 0, -1)]

    def done_times(self, key: str, players: list[Contender], count: int, since: float,
                   timeout: float) -> dict[str, float | None]:
        """Seconds after `since` at which each contender had `count` distinct tasks done (None: not
        within `timeout`), all watched at once."""
        found: dict[str, float] = {}
        deadline = since + timeout
        while len(found) < len(players) and time.time() < deadline:
            for contender in players:
                if contender.name not in found and len(set(self.runs(key, contender))) >= count:
                    found[contender.name] = time.time() - since
            time.sleep(0.05)
        return {c.name: found.get(c.name) for c in players}

    def waiting(self, contender: Contender) -> int:
        """Messages of the contender's queue in its lists or in kombu's unacked hash."""
        queue = contender.queue
        listed = sum(self.redis.llen(name) for name in (queue, *(f"{queue}{PRIORITY_SEP}{s}" for s in PRIORITY_STEPS)))
        unacked = 0
        for value in self.redis.hvals("unacked"):
            _, _, routing_key = json.loads(value)
            unacked += routing_key == queue
        return listed + unacked

    # back to zero

    def reset(self, contenders_: list[Contender], timeout: float = 240) -> None:
        """Every contender at zero replicas with no pod left, its scaler as configured: KEDA's with a
        new ScaledObject, ours with its window set to 0 s until it is at zero, then back to the default."""
        ours = {self.taskqueue_of[c.name] for c in contenders_ if not c.is_keda}
        for contender in contenders_:
            self.purge(contender)
        for contender in contenders_:
            if contender.is_keda:
                self.delete_scaled_object(contender)
                self.apps.patch_namespaced_deployment_scale(self.deployment(contender), NAMESPACE,
                                                            {"spec": {"replicas": 0}})
        for name in ours:
            self.set_window(name, 0)
        for contender in contenders_:
            wait_for(lambda c=contender: self.watch.replicas(self.deployment(c)) == 0 and not self.pods(c), timeout,
                     f"{contender.name} at zero with no pods", interval=0.5)
        for name in ours:
            self.set_window(name, None)
        for contender in contenders_:
            self.purge(contender)  # what a stopping worker gave back
            if contender.is_keda:
                self.apply_scaled_object(contender)

    def set_window(self, taskqueue_name: str, seconds: int | None) -> None:
        """The TaskQueue's scale-down window; None = the default (the field removed)."""
        self.custom.patch_namespaced_custom_object("celery-operator.dev", "v1alpha1", NAMESPACE, "taskqueues",
                                                   taskqueue_name, {"spec": {"autoscaling": (
                                                       None if seconds is None else
                                                       {"scaleDownStabilizationSeconds": seconds})}})

    def remove_variant(self, variant: str) -> None:
        """The variant's TaskQueue and KEDA's objects gone, so that they cost nothing any more."""
        for contender in contenders(variant):
            if contender.is_keda:
                self.delete_scaled_object(contender)
                self.cluster.kubectl("delete", "deployment", "-n", NAMESPACE, keda_deployment_name(contender),
                                     "--ignore-not-found")
        self.cluster.kubectl("delete", "taskqueue", "-n", NAMESPACE, f"race-{variant}", "--ignore-not-found",
                             timeout=120)
        for contender in contenders(variant):
            self.taskqueue_of.pop(contender.name, None)

    def pods(self, contender: Contender) -> list[Any]:
        name = self.deployment(contender)
        return [p for p in self.core.list_namespaced_pod(NAMESPACE).items if p.metadata.name.startswith(f"{name}-")]

    def close(self) -> None:
        self.watch.stop()
        self.redis.close()
        self.api.close()


# --- scenarios ----------------------------------------------------------------------------------

def our_name(players: list[Contender]) -> str:
    return next(c.name for c in players if not c.is_keda)


def by_kind(contenders_: list[Contender], values: dict[str, Any]) -> dict[str, Any]:
    return {kind_of(c): values[c.name] for c in contenders_ if c.name in values}


def first_message(race: Race, trials: int) -> Table:
    players = contenders("early")
    reactions: dict[str, list[float]] = {c.name: [] for c in players}
    done: dict[str, list[float]] = {c.name: [] for c in players}
    for trial in range(trials):
        race.reset(players)
        key = f"first-{trial}"
        since = race.send(players, key, 1, 0)
        done_after = race.done_times(key, players, 1, since, timeout=120)
        for contender in players:
            reacted = race.watch.first(race.deployment(contender), since, lambda r: r > 0)
            if reacted is not None:
                reactions[contender.name].append(reacted)
            if done_after[contender.name] is not None:
                done[contender.name].append(done_after[contender.name])
    ours = our_name(players)
    table = Table(f"First message on a queue at zero ({trials} trials, p50 / p95)")
    for figure, samples in (("message → replicas > 0", reactions), ("message → its task done", done)):
        typical = medians(samples)
        table.add(figure, by_kind(players, {n: p50_p95(v) for n, v in samples.items()}),
                  ratio(by_kind(players, typical), typical[ours]))
    return table


def drain(race: Race, tasks: int, timeout: float) -> tuple[Table, dict[str, int]]:
    players = contenders("early")
    race.reset(players)
    since = race.send(players, "drain", tasks, 0.2)
    finished = race.done_times("drain", players, tasks, since, timeout)
    until = time.time()
    reaction = {c.name: race.watch.first(race.deployment(c), since, lambda r: r > 0) for c in players}
    peaks = {c.name: race.watch.peak(race.deployment(c), since, until) for c in players}
    table = Table(f"Drain: {tasks} tasks of 200 ms sent at once to a queue at zero")
    ours = our_name(players)
    table.add("burst → replicas > 0", by_kind(players, {n: seconds_cell(v, timeout) for n, v in reaction.items()}),
              ratio(by_kind(players, reaction), reaction[ours]))
    table.add("burst → all done", by_kind(players, {n: seconds_cell(v, timeout) for n, v in finished.items()}),
              ratio(by_kind(players, finished), finished[ours]))
    table.add("peak replicas", by_kind(players, {n: str(v) for n, v in peaks.items()}))
    return table, peaks


BUSY_TASK_SECONDS, BUSY_WINDOW = 60, 90


def busy(race: Race, trials: int, burst: int) -> Table:
    """Each contender gets its burst as soon as it runs its long tasks on one replica with nothing
    waiting: KEDA's scalers do not see running tasks, so keda-tuned may scale a busy queue to zero
    60 s after its tasks were taken, and KEDA's defaults take up to 30 s to start the first replica."""
    players = contenders("early")
    reactions: dict[str, list[float]] = {c.name: [] for c in players}
    missed = {c.name: 0 for c in players}
    for trial in range(trials):
        race.reset(players)
        key = f"busy-{trial}"
        race.send(players, f"{key}-long", CONCURRENCY, BUSY_TASK_SECONDS)  # one replica's slots
        sent: dict[str, tuple[float, int]] = {}  # contender -> (burst sent at, its replicas then)

        def send_to_the_busy() -> bool:
            for contender in players:
                if contender.name in sent:
                    continue
                replicas = race.watch.replicas(race.deployment(contender))
                if replicas >= 1 and race.waiting(contender) == 0:
                    sent[contender.name] = (race.send([contender], key, burst, 2), replicas)
            return len(sent) == len(players)

        try:
            wait_for(send_to_the_busy, 180, "every contender busy on one replica", interval=0.2)
        except AssertionError as timeout:
            states = {c.name: (race.watch.replicas(race.deployment(c)), race.waiting(c), len(race.runs(f"{key}-long", c)))
                      for c in players if c.name not in sent}
            raise AssertionError(f"{timeout}: not busy (replicas, waiting, long tasks done): {states}") from None
        for contender in players:
            name = race.deployment(contender)
            since, before = sent[contender.name]

            def rose(n: str = name, t: float = since, b: int = before) -> float | None:
                return race.watch.first(n, t, lambda r: r > b)

            try:
                reactions[contender.name].append(wait_for(rose, t_left(since, BUSY_WINDOW),
                                                          f"{contender.name} to scale past {before}"))
            except AssertionError:
                missed[contender.name] += 1
    table = Table(f"A burst ({burst} × 2 s) on a queue already busy on one replica ({trials} trials, p50 / p95)")
    typical = medians(reactions)
    ours = our_name(players)
    table.add("burst → replicas rise",
              by_kind(players, {n: p50_p95(v, missed[n], BUSY_WINDOW) for n, v in reactions.items()}),
              ratio(by_kind(players, typical), typical[ours]))
    return table


def scale_down_safety(race: Race) -> Table:
    players = contenders("early") + contenders("late")
    race.reset(players)
    since = race.send(players, "long", CONCURRENCY, LONG_TASK_SECONDS)
    # every task runs once, or was interrupted: wait until no contender can still finish one
    settle = LONG_TASK_SECONDS + GRACE_SECONDS + 30
    wait_for(lambda: time.time() - since >= settle, settle + 5, "the long tasks' time", interval=1)
    outcomes = {c.name: Outcome(CONCURRENCY, len(set(race.runs("long", c))), len(race.runs("long", c)),
                                race.waiting(c)) for c in players}
    table = Table(f"Scale-down safety: {CONCURRENCY} tasks of {LONG_TASK_SECONDS} s on a queue at zero, "
                  f"grace period {GRACE_SECONDS} s (completed / interrupted / lost / awaiting redelivery)")
    for variant, label in (("early", "Celery's default early ack"), ("late", "acks_late")):
        group = contenders(variant)
        table.add(label, {kind_of(c): (f"{outcomes[c.name].completed} / {outcomes[c.name].interrupted} / "
                                       f"{outcomes[c.name].lost} / {outcomes[c.name].waiting}") for c in group})
    return table


def priorities(race: Race, tasks: int, window: float, plain_peaks: dict[str, int]) -> Table:
    players = contenders("early")
    race.reset(players)
    since = race.send(players, "priority", tasks, 0.2, priority=9)
    wait_for(lambda: time.time() - since >= window, window + 5, "the priority window", interval=0.5)
    until = time.time()
    peaks = {c.name: race.watch.peak(race.deployment(c), since, until) for c in players}
    done = {c.name: len(set(race.runs("priority", c))) for c in players}
    reaction = {c.name: race.watch.first(race.deployment(c), since, lambda r: r > 0) for c in players}
    table = Table(f"Priorities: {tasks} tasks of 200 ms sent with priority 9 to a queue at zero, {window:.0f} s window")
    table.add("burst → replicas > 0", by_kind(players, {n: seconds_cell(v, window) for n, v in reaction.items()}))
    table.add("peak replicas (the same burst without priorities)",
              by_kind(players, {n: f"{peaks[n]} ({plain_peaks.get(n, 0)})" for n in peaks}))
    table.add(f"tasks done within {window:.0f} s", by_kind(players, {n: f"{v} of {tasks}" for n, v in done.items()}))
    race.reset(players)
    return table


def idle_cost(race: Race, window: float) -> Table:
    """A window per KEDA contender with only its ScaledObject present (KEDA's costs are the operator's,
    the metrics server's and the HPA controller's); ours is always there and told apart by its
    ServiceAccount and its pod's address (pods are not masqueraded here): the mean of the windows."""
    players = contenders("early")
    race.remove_variant("late")
    race.reset(players)
    keda_pods = {p.status.pod_ip for p in race.core.list_namespaced_pod("keda").items}
    our_pods = {p.status.pod_ip for p in race.core.list_namespaced_pod(operator_ha.RELEASE_NAMESPACE).items}
    ours = next(c for c in players if not c.is_keda)
    commands: dict[str, float] = {}
    requests: dict[str, float] = {}
    our_commands, our_requests = [], []
    for contender in (c for c in players if c.is_keda):
        others = [c for c in players if c.is_keda and c is not contender]
        for other in others:
            race.delete_scaled_object(other)
        per_source, per_user = measure_idle(race, window)
        commands[contender.name] = per_minute(sum(n for ip, n in per_source.items() if ip in keda_pods), window)
        requests[contender.name] = per_minute(sum(per_user.get(user, 0) for user in KEDA_USERS), window)
        our_commands.append(per_minute(sum(n for ip, n in per_source.items() if ip in our_pods), window))
        our_requests.append(per_minute(per_user.get(OUR_USER, 0), window))
        for other in others:
            race.apply_scaled_object(other)
    commands[ours.name], requests[ours.name] = statistics.mean(our_commands), statistics.mean(our_requests)
    table = Table(f"Idle: nothing to do, per minute ({window:.0f} s windows)")
    table.add("broker commands", by_kind(players, {n: f"{v:.0f}" for n, v in commands.items()}),
              ratio(by_kind(players, commands), commands[ours.name]))
    table.add("Kubernetes API requests", by_kind(players, {n: f"{v:.0f}" for n, v in requests.items()}),
              ratio(by_kind(players, requests), requests[ours.name]))
    return table


def t_left(since: float, window: float) -> float:
    """What is left of a `window` that began at `since` (at least a moment, to look once)."""
    return max(0.1, since + window - time.time())


def per_minute(count: float, window: float) -> float:
    return count * 60 / window


def measure_idle(race: Race, window: float) -> tuple[dict[str, int], dict[str, int]]:
    """Broker commands by client address (MONITOR) and API requests by user (audit log) in `window`."""
    audit = race.cluster.dir / "logs" / "audit.log"
    offset = audit.stat().st_size
    per_source: dict[str, int] = {}
    client = redis.Redis(host=race.broker.host, port=race.broker.port)
    deadline = time.time() + window
    with client.monitor() as monitor:
        while time.time() < deadline:
            command = monitor.next_command()
            address = command.get("client_address", "")
            per_source[address] = per_source.get(address, 0) + 1
    client.close()
    requests: dict[str, str] = {}  # auditID -> user: a watch is logged when it starts and when it ends
    with audit.open() as log:
        log.seek(offset)
        for line in log:
            entry = json.loads(line)
            requests[entry["auditID"]] = entry["user"]["username"]
    per_user: dict[str, int] = {}
    for user in requests.values():
        per_user[user] = per_user.get(user, 0) + 1
    return per_source, per_user


# --- the run ------------------------------------------------------------------------------------

LATE_ACK_ENV = [{"name": "CELERY_TASK_ACKS_LATE", "value": "true"}]


@contextlib.contextmanager
def race_cluster(directory: Path, existing: Path | None = None) -> Iterator[tuple[DevCluster, RedisServer]]:
    """A cluster of its own with KEDA, or the running cluster in `existing` that has KEDA already
    (keda_deploy.deploy); the chart's operator and a Redis on the host."""
    if existing is None:
        clustered = own_cluster(directory / "cluster", nodes=1)
    else:
        clustered = contextlib.nullcontext(DevCluster(dir=existing.resolve(), bin_dir=build.bin_dir()))
    with clustered as handle:
        if existing is None:
            keda_deploy.deploy(handle.dir)
        # one replica, and the chart's own resync (the helper's install sets the tests' 2 s)
        operator_ha.install(handle, "--set", "replicaCount=1", "--set", "config.resyncSeconds=10")
        handle.kubectl("create", "namespace", NAMESPACE)
        # keyspace notifications, as the operator configures its managed Redis: the first message on
        # a queue at zero wakes our scaler; KEDA has no use for them
        broker = start_redis(directory / "redis", host=handle.host_ip, extra_args=["--notify-keyspace-events", "Kl"])
        try:
            yield handle, broker
        finally:
            broker.stop()


def progress(text: str, started: float) -> None:
    print(f"bench_keda {time.monotonic() - started:6.0f} s: {text}", file=sys.stderr, flush=True)


def run(quick: bool, trials: int, existing: Path | None = None) -> tuple[list[Table], list[str]]:
    """Every scenario's table, and the scenarios that failed (each said on stderr, the others still run)."""
    tasks = 40 if quick else 200
    started = time.monotonic()
    tables: list[Table] = []
    failed: list[str] = []
    peaks: dict[str, int] = {}

    def scenario(name: str, measure: Callable[[], Table]) -> None:
        progress(name, started)
        try:
            tables.append(measure())
        except Exception:  # noqa: BLE001 - one scenario's failure is reported, the others still measure
            traceback.print_exc()
            failed.append(name)

    def drain_keeping_peaks() -> Table:
        table, found = drain(race, tasks, timeout=420 if quick else 900)
        peaks.update(found)
        return table

    with tempfile.TemporaryDirectory(prefix="bench-keda-") as scratch:
        progress("a cluster with KEDA, the operator and a Redis", started)
        with race_cluster(Path(scratch), existing) as (handle, broker):
            race = Race(handle, broker)
            try:
                race.start({"early": [], "late": LATE_ACK_ENV})
                scenario("first message", lambda: first_message(race, trials))
                scenario("drain", drain_keeping_peaks)
                scenario("busy", lambda: busy(race, trials, burst=8))
                scenario("priorities", lambda: priorities(race, tasks, window=30 if quick else 60, plain_peaks=peaks))
                scenario("scale-down safety", lambda: scale_down_safety(race))
                scenario("idle", lambda: idle_cost(race, window=20 if quick else 60))
            finally:
                race.close()
    return tables, failed


REACTIONS = ("replicas > 0", "replicas rise")  # the bar: react an order of magnitude faster than KEDA


def headline(tables: list[Table]) -> list[figures.Figure]:
    """For `python -m bench`'s summary: KEDA tuned's figure over ours (p50), per row with a ratio;
    the reactions against the bar of 10×."""
    found = []
    for table in tables:
        scenario = table.title.split(" (")[0].split(":")[0]
        for figure, _, ratio_text in table.rows:
            tuned = ratio_text.split(" / ")[-1] if ratio_text else ""
            if not tuned.endswith("×"):
                continue
            value = float(tuned.rstrip("×"))
            name = f"KEDA tuned ÷ ours, {scenario}: {figure}"
            if figure.endswith(REACTIONS):
                found.append(figures.Figure(name, value, "×", "≥ 10×", value >= 10))
            else:
                found.append(figures.Figure(name, value, "×"))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 trial each, 40-task bursts, short windows")
    parser.add_argument("--trials", type=int, default=None, help="trials of the reaction scenarios (default 5, quick 1)")
    parser.add_argument("--cluster", type=Path, default=None, metavar="DIR",
                        help="run in the devcluster in DIR, KEDA deployed there already (python -m devcluster "
                             "keda-up --dir DIR), instead of a cluster of its own")
    parser.add_argument("--write-docs", action="store_true", help=f"write the tables into {DOCS.relative_to(ROOT)}")
    figures.add_argument(parser)
    args = parser.parse_args(argv)
    trials = args.trials or (1 if args.quick else 5)
    started = time.monotonic()
    tables, failed = run(args.quick, trials, args.cluster)
    took = time.monotonic() - started
    stamp = datetime.date.today().isoformat()
    command = "bench/bench_keda.py" + (" --quick" if args.quick else "") + (f" --trials {args.trials}" if args.trials else "")
    section = (f"Measured {stamp} on {runner.this_machine()}, `{command}`, {took / 60:.1f} min, KEDA {keda.KEDA_VERSION}.\n\n"
               + "\n\n".join(t.markdown() for t in tables))
    print(section)
    missing = [cell for t in tables for cell in t.unmeasured()]
    if args.write_docs:
        DOCS.write_text(replace_section(DOCS.read_text(), section))
    figures.report(args.figures, headline(tables))
    if missing or failed:
        print("not measured: " + "; ".join(missing + [f"{name} (failed)" for name in failed]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
