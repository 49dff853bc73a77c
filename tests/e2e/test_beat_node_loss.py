"""A PeriodicJob every 2 s across the loss of the beat's node: no run doubled, none missing.

A devcluster of its own with two nodes and the operator against it; the TaskQueue's beat pod runs on
one of them. That node is stopped as a machine fails (kubelet, containerd and every container killed,
no goodbye to the API server): the node goes NotReady, its pods are evicted, and the beat's
Deployment starts a new pod on the other node, which carries on from the schedule's state in Redis and
catches up the runs that fell due meanwhile, oldest first.

The runs are `record` tasks whose ids name their slot (`<namespace>/<job>@<slot>`), run by a Celery
worker of the sample app on the host, so that the node's loss takes nothing but the beat with it (a
worker lost mid-task is the fault test's subject, tests/e2e/test_fault_tolerance.py). Figures are
printed; run with -s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import cluster
from tests.helpers.devcluster import DevCluster, own_cluster
from tests.helpers.operator import apply_crds, start_operator
from tests.helpers.periodicjobs import (PeriodicJobs, assert_consecutive, assert_unique, beat_pods, fired,
                                        periodicjob, run_slots)
from tests.helpers.processes import start_redis, start_worker
from tests.helpers.taskqueues import TaskQueues, taskqueue
from tests.helpers.waiting import ConditionNotMet, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

NAMESPACE, INTERVAL = "clock", 2.0


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[DevCluster]:
    with own_cluster(tmp_path / "cluster", nodes=2) as handle:
        apply_crds(handle)
        handle.kubectl("create", "namespace", NAMESPACE)
        yield handle


def test_a_two_second_job_keeps_its_rate_across_the_loss_of_the_beats_node(two_nodes: DevCluster,
                                                                            tmp_path: Path) -> None:
    operator = start_operator(two_nodes, tmp_path / "operator.log")
    broker = start_redis(tmp_path / "redis", host=two_nodes.host_ip)
    worker = start_worker(queues=["jobs"], broker_url=broker.url, log=tmp_path / "worker.log", concurrency=2)
    tqs, pjs = TaskQueues(two_nodes, NAMESPACE), PeriodicJobs(two_nodes, NAMESPACE)
    try:
        url = broker.url
        tqs.apply(taskqueue("clock", broker={"url": url}, queues=[{"name": "jobs", "replicas": 0}]))
        pjs.apply(periodicjob("tick", "clock", "tick-runs", interval="2s"))
        pjs.wait_ready("tick", "True", "Scheduled", timeout=120)
        wait_for(lambda: len(run_slots(url, "tick-runs")) >= 3, 60, "three runs")
        (beat,) = beat_pods(tqs.core, NAMESPACE, "clock")
        lost = beat.spec.node_name

        stopped = time.time()
        cluster.stop_node(two_nodes.dir, two_nodes.node_names.index(lost) + 1)
        last_before = fired(url, NAMESPACE, "clock", "tick")
        try:
            resumed = wait_for(lambda: (f := fired(url, NAMESPACE, "clock", "tick")) and f > last_before
                               and time.time(), 120, "a run sent by a beat after the node was lost", interval=0.2)
            (moved,) = wait_for(lambda: beat_pods(tqs.core, NAMESPACE, "clock"), 30, "one beat pod")
            caught_up = wait_for(lambda: max(run_slots(url, "tick-runs")) >= time.time() - 2 * INTERVAL and time.time(),
                                 60, "the runs caught up to now", interval=0.2)
            wait_for(lambda: max(run_slots(url, "tick-runs")) >= caught_up + 5 * INTERVAL, 30,
                     "five more runs on the new beat")
        except ConditionNotMet as timeout:
            pods = two_nodes.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
            raise AssertionError(f"{timeout}\n{pods}\n{operator.log_text()[-3000:]}") from None
        print(f"\nbeat's node {lost} stopped: the next run sent {resumed - stopped:.1f} s later, by "
              f"{moved.metadata.name} on {moved.spec.node_name}; caught up {caught_up - stopped:.1f} s after the stop")
        assert moved.metadata.name != beat.metadata.name and moved.spec.node_name != lost
        slots = run_slots(url, "tick-runs", "tick")
        assert any(last_before < slot < resumed - INTERVAL for slot in slots), "the outage's runs were caught up"
        assert_unique(slots)
        assert_consecutive(slots, INTERVAL)
        tqs.wait_condition("clock", "BeatReady", "True", timeout=60)
    finally:
        tqs.close()
        pjs.close()
        worker.stop()
        broker.stop()
        operator.stop()
