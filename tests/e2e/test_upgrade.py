"""An operator upgrade under load, from the previous release to this tree, as CHANGELOG.md tells a
user to make it.

A devcluster of its own with one node runs the previous release (tests/release/previous.json: its
chart and operator image, built from its commit) with app/examples as that release shipped them, a
PeriodicJob every 2 s, a steady stream of short `record` tasks, and a few tasks that run longer than
the upgrade takes. The TaskQueue is paused (the old operator ignores the annotation), the chart of
this tree is `helm upgrade`d over it, and the TaskQueue is resumed (after the step the CHANGELOG
names for an in-memory broker of a release before the durable default).

Asserted: every task id ran exactly once; no Deployment of the TaskQueue rolled unless the
CHANGELOG lists it for this version; the beat's job neither doubled nor skipped a run; the TaskQueue
was Ready throughout, or said why not. The timeline is printed; run with -s.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import celery
import pytest
import redis

from devcluster import cluster, images
from tests.helpers import operator_ha as ha
from tests.helpers import previous_release
from tests.helpers.devcluster import DevCluster, own_cluster
from tests.helpers.periodicjobs import PeriodicJobs, assert_consecutive, assert_unique, periodicjob, run_slots
from tests.helpers.taskqueues import TaskQueues
from tests.helpers.waiting import ConditionNotMet, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE, KEY, TICKS = "shop", "upgrade-runs", "tick-runs"
SHORT_EVERY = 0.25  # a short task (0-300 ms) every quarter second
# `helm upgrade --wait` gives up after HELM_TIMEOUT: tasks longer than that outlast any upgrade that
# succeeds, however slow the machine (measured: 5-9 s), so the test cannot fail on their timing
HELM_TIMEOUT = 170
LONG_TASKS, LONG_SECONDS = 3, HELM_TIMEOUT + 10  # sent just before the upgrade, running through it
READY_TIMEOUT = 240


def chart_values(cluster_handle: DevCluster) -> list[str]:
    return ["--set", "config.resyncSeconds=2", "--set", f"config.sourceCidrs={cluster_handle.node_network}"]


@pytest.fixture(scope="module")
def previous(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevCluster]:
    """A cluster running the previous release's chart and operator image."""
    image = previous_release.operator_image()
    with own_cluster(tmp_path_factory.mktemp("upgrade") / "cluster", nodes=1) as handle:
        cluster.load_images(handle.handle, [image])
        built = images.build_images(["redis", "flower"])
        repository, tag = image.reference.rsplit(":", 1)
        handle.kubectl("create", "namespace", ha.RELEASE_NAMESPACE)
        handle.helm("install", ha.RELEASE, str(previous_release.chart()), "--namespace", ha.RELEASE_NAMESPACE,
                    "--wait", "--timeout", "170s", "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
                    "--set", f"redis.image={built['redis'].reference}", "--set",
                    f"flower.image={built['flower'].reference}", *chart_values(handle), timeout=180)
        handle.kubectl("create", "namespace", NAMESPACE)
        yield handle


class Stream:
    """Short `record` tasks into high_priority, numbered, until stopped; long ones on request."""

    def __init__(self, url: str):
        self.url, self.sent, self.errors = url, 0, 0
        self._numbering = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._app = celery.Celery("producer", broker=url)

    def start(self) -> None:
        self._thread.start()

    def send(self, seconds: float) -> None:
        with self._numbering:
            number, self.sent = self.sent, self.sent + 1
        self._app.send_task("myapp.tasks.record", args=[KEY, number, seconds], queue="high_priority",
                            ignore_result=True, retry=True,
                            retry_policy={"max_retries": 60, "interval_start": 0.5, "interval_step": 0.5,
                                          "interval_max": 1})

    def _run(self) -> None:
        number = 0
        while not self._stop.wait(SHORT_EVERY):
            try:
                self.send((number % 7) * 0.05)
            except Exception:  # noqa: BLE001 - counted: a message the producer could not hand over
                self.errors += 1
            number += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._app.close()


def recorded(url: str) -> list[int]:
    with redis.Redis.from_url(url, socket_timeout=5) as client:
        return [json.loads(entry)["value"] for entry in client.lrange(KEY, 0, -1)]


def revisions(tqs: TaskQueues) -> dict[str, str]:
    """Each Deployment of the TaskQueue's revision: it moves when its pod template changes (a roll)."""
    found = tqs.apps.list_namespaced_deployment(NAMESPACE, label_selector="app.kubernetes.io/instance=shop").items
    return {item.metadata.name: (item.metadata.annotations or {}).get("deployment.kubernetes.io/revision", "")
            for item in found}


def rolls_listed(version: str) -> set[str]:
    """The components whose Deployments CHANGELOG.md says an upgrade to `version` rolls."""
    text = (ROOT / "CHANGELOG.md").read_text()
    start = text.index(f"## {version}")
    end = text.find("\n## ", start + 1)
    return set(re.findall(r"^- ([\w-]+) Deployment — rolls", text[start:end if end != -1 else None], re.MULTILINE))


def component(deployment: str) -> str:
    return "worker" if "-worker-" in deployment else deployment.removeprefix("shop-")


class ReadyWatch:
    """Samples the TaskQueue's Ready condition every second, from before the upgrade to the end."""

    def __init__(self, tqs: TaskQueues):
        self.seen: list[tuple[str, str, str]] = []
        self._tqs, self._stop = tqs, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1):
            try:
                ready = self._tqs.condition("shop", "Ready") or {}
            except Exception:  # noqa: BLE001 - the API server is not what this watches
                continue
            sample = (ready.get("status", ""), ready.get("reason", ""), ready.get("message", ""))
            if not self.seen or self.seen[-1] != sample:
                self.seen.append(sample)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_an_upgrade_under_load_from_the_previous_release_loses_nothing_and_rolls_only_what_it_lists(
        previous: DevCluster) -> None:
    tqs, pjs = TaskQueues(previous, NAMESPACE), PeriodicJobs(previous, NAMESPACE)
    timeline: list[tuple[float, str]] = []
    started = time.monotonic()

    def mark(what: str) -> None:
        timeline.append((time.monotonic() - started, what))

    previous.kubectl("apply", "-n", NAMESPACE, "-f", str(previous_release.examples() / "taskqueue.yaml"))
    pjs.apply(periodicjob("tick", "shop", TICKS, queue="low_priority", interval="2s"))
    tqs.wait_condition("shop", "Ready", "True", timeout=READY_TIMEOUT)
    pjs.wait_ready("tick", "True", "Scheduled", timeout=60)
    secret = tqs.core.read_namespaced_secret("shop-broker", NAMESPACE)
    url = base64.b64decode(secret.data["url"]).decode()
    mark(f"{previous_release.VERSION} running the example")

    stream = Stream(url)
    stream.start()
    watch = ReadyWatch(tqs)
    try:
        wait_for(lambda: len(recorded(url)) >= 40, 120, "the stream's first 40 tasks done")
        before = revisions(tqs)
        for _ in range(LONG_TASKS):
            stream.send(LONG_SECONDS)
        mark(f"{LONG_TASKS} tasks of {LONG_SECONDS} s sent")
        previous.kubectl("annotate", "tq", "shop", "-n", NAMESPACE, "celery-operator.dev/reconcile=paused")
        mark("paused")
        upgrade = time.monotonic()
        previous.helm("upgrade", ha.RELEASE, str(ha.CHART), "--namespace", ha.RELEASE_NAMESPACE, "--wait",
                      "--timeout", f"{HELM_TIMEOUT}s", *images.operator_chart_values(), *chart_values(previous),
                      timeout=HELM_TIMEOUT + 10)
        upgraded_in = time.monotonic() - upgrade
        mark(f"helm upgrade done ({upgraded_in:.0f} s)")
        assert upgraded_in < LONG_SECONDS, "the long tasks must outlast the upgrade"
        tqs.wait_condition("shop", "Paused", "True", "ReconcilePaused", timeout=60)
        mark("the new operator reports the TaskQueue paused")
        example = previous_release.RECORD["taskqueues"]["example"]["Deployment/example-broker"]
        if any("emptyDir" in volume for volume in example["spec"]["template"]["spec"]["volumes"]):
            # the previous release's default broker keeps its queue in memory: the CHANGELOG's way to
            # upgrade without losing it keeps it so, explicitly (the durable switch is for a quiet moment)
            tqs.patch_spec("shop", {"broker": {"managed": {"persistence": {"enabled": False}}}})
            mark("kept the in-memory broker explicitly")
        previous.kubectl("annotate", "tq", "shop", "-n", NAMESPACE, "celery-operator.dev/reconcile-")
        tqs.wait_condition("shop", "Ready", "True", timeout=READY_TIMEOUT)
        assert tqs.get("shop")["status"].get("operatorVersion") == this_version(), "the new release reconciled it"
        mark("resumed, Ready")
        resumed_at = stream.sent
        wait_for(lambda: len(recorded(url)) >= resumed_at + 40, 120, "40 more tasks done on the new release")
    finally:
        stream.stop()
        watch.stop()
    mark(f"stream stopped: {stream.sent} sent, {stream.errors} refused")

    try:
        wait_for(lambda: len(set(recorded(url))) >= stream.sent, LONG_SECONDS + 120, "every task done", interval=1)
    except ConditionNotMet as timeout:
        pods = previous.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
        raise AssertionError(f"{timeout}\n{pods}") from None
    mark("every task done")
    for at, what in timeline:
        print(f"{at:7.1f} s  {what}")

    runs = Counter(recorded(url))
    lost = sorted(set(range(stream.sent)) - set(runs))
    duplicated = {number: count for number, count in runs.items() if count > 1}
    print(f"tasks: sent {stream.sent}, completed {len(runs)}, lost {len(lost)}, duplicated {len(duplicated)}")
    assert stream.errors == 0, "the producer's messages were all taken"
    assert not lost and not duplicated, (lost[:20], duplicated)

    rolled = {component(name) for name, revision in revisions(tqs).items() if before.get(name) != revision}
    listed = rolls_listed(this_version())
    print(f"rolled: {sorted(rolled)}; the CHANGELOG lists: {sorted(listed)}")
    assert rolled <= listed, f"{sorted(rolled - listed)} rolled without the CHANGELOG saying so"
    assert "worker" not in rolled

    slots = run_slots(url, TICKS, "tick")
    assert_unique(slots)
    assert_consecutive(slots, 2.0)
    print(f"PeriodicJob: {len(slots)} runs, none doubled or missing")
    silent = [sample for sample in watch.seen if sample[0] != "True" and not (sample[1] and sample[2])]
    assert not silent, f"Ready False without a reason: {silent}"
    print("Ready:", [sample[:2] for sample in watch.seen])


def this_version() -> str:
    """The version this tree is (the CHANGELOG's newest entry)."""
    text = (ROOT / "CHANGELOG.md").read_text()
    return re.findall(r"^## (\d+\.\d+\.\d+)", text, re.MULTILINE)[0]
