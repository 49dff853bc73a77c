"""The exporter-compatible series of celery_operator.metrics, read back from the registry as a scrape sees them."""

from __future__ import annotations

import uuid

import pytest
from celery_operator import metrics
from celery_operator.models import ObjectIdentity
from prometheus_client import REGISTRY

pytestmark = pytest.mark.unit


@pytest.fixture
def identity() -> ObjectIdentity:
    """A TaskQueue of its own per test: the registry is process-wide."""
    return ObjectIdentity(name="shop", namespace=f"ns-{uuid.uuid4().hex[:8]}", uid="uid-1")


def worker(name: str, identity: ObjectIdentity, hostname: str, queue: str = "jobs") -> float | None:
    return REGISTRY.get_sample_value(name, {"namespace": identity.namespace, "taskqueue": identity.name,
                                            "queue_name": queue, "hostname": hostname})


def hostnames(identity: ObjectIdentity, queue: str = "jobs") -> set[str]:
    found = set()
    for family in REGISTRY.collect():
        if family.name in ("celery_worker_up", "celery_worker_tasks_active"):
            found |= {s.labels["hostname"] for s in family.samples
                      if s.labels["namespace"] == identity.namespace and s.labels["queue_name"] == queue}
    return found


def test_record_queue_sets_the_exporters_queue_length(identity: ObjectIdentity) -> None:
    metrics.record_queue(identity, "jobs", pending=42, in_flight=3, desired=5, replicas=2)
    labels = {"namespace": identity.namespace, "taskqueue": "shop"}
    assert REGISTRY.get_sample_value("celery_queue_length", {**labels, "queue_name": "jobs"}) == 42
    assert REGISTRY.get_sample_value("celery_operator_queue_pending", {**labels, "queue": "jobs"}) == 42


def test_record_workers_sets_up_and_active_per_worker(identity: ObjectIdentity) -> None:
    metrics.record_workers(identity, "jobs", up={"jobs@shop-worker-jobs-a": 2, "shop-worker-jobs-b": 0},
                           down=["jobs@shop-worker-jobs-c"])
    assert worker("celery_worker_up", identity, "shop-worker-jobs-a") == 1
    assert worker("celery_worker_tasks_active", identity, "shop-worker-jobs-a") == 2
    assert worker("celery_worker_up", identity, "shop-worker-jobs-b") == 1
    assert worker("celery_worker_tasks_active", identity, "shop-worker-jobs-b") == 0
    assert worker("celery_worker_up", identity, "shop-worker-jobs-c") == 0
    assert worker("celery_worker_tasks_active", identity, "shop-worker-jobs-c") == 0


def test_hostname_is_the_host_part_of_the_node_name_as_the_exporter_has_it() -> None:
    pod = "shop-worker-high-priority-5d8f-x2x"
    assert metrics.worker_hostname(f"high_priority@{pod}") == pod
    assert metrics.worker_hostname("shop-worker-jobs-a") == "shop-worker-jobs-a"


def test_a_worker_heartbeating_again_is_up_and_one_gone_leaves_no_series(identity: ObjectIdentity) -> None:
    metrics.record_workers(identity, "jobs", up={"a": 1}, down=["b"])
    metrics.record_workers(identity, "jobs", up={"b": 4}, down=[])
    assert hostnames(identity) == {"b"}
    assert worker("celery_worker_up", identity, "b") == 1
    assert worker("celery_worker_tasks_active", identity, "b") == 4
    assert worker("celery_worker_up", identity, "a") is None
    metrics.record_workers(identity, "jobs", up={}, down=[])
    assert hostnames(identity) == set()


def test_a_worker_named_up_and_down_is_up(identity: ObjectIdentity) -> None:
    metrics.record_workers(identity, "jobs", up={"a": 3}, down=["a"])
    assert (worker("celery_worker_up", identity, "a"), worker("celery_worker_tasks_active", identity, "a")) == (1, 3)


def test_record_workers_touches_only_its_own_queue_and_taskqueue(identity: ObjectIdentity) -> None:
    other = ObjectIdentity(name="billing", namespace=identity.namespace, uid="uid-2")
    metrics.record_workers(identity, "jobs", up={"a": 1}, down=[])
    metrics.record_workers(identity, "mail", up={"m": 1}, down=[])
    metrics.record_workers(other, "jobs", up={"a": 7}, down=[])
    metrics.record_workers(identity, "jobs", up={}, down=[])
    assert hostnames(identity, "mail") == {"m"}
    assert REGISTRY.get_sample_value("celery_worker_tasks_active", {
        "namespace": identity.namespace, "taskqueue": "billing", "queue_name": "jobs", "hostname": "a"}) == 7
    assert worker("celery_worker_up", identity, "a") is None


def test_sum_by_queue_name_adds_taskqueues_as_with_the_exporter(identity: ObjectIdentity) -> None:
    other = ObjectIdentity(name="billing", namespace=identity.namespace, uid="uid-2")
    metrics.record_queue(identity, "jobs", pending=2, in_flight=0, desired=1, replicas=1)
    metrics.record_queue(other, "jobs", pending=5, in_flight=0, desired=1, replicas=1)
    [family] = [f for f in REGISTRY.collect() if f.name == "celery_queue_length"]
    ours = [s for s in family.samples if s.labels["namespace"] == identity.namespace]
    assert sorted(s.labels["taskqueue"] for s in ours) == ["billing", "shop"]
    assert sum(s.value for s in ours if s.labels["queue_name"] == "jobs") == 7


def test_forget_taskqueue_drops_the_exporter_series_too(identity: ObjectIdentity) -> None:
    other = ObjectIdentity(name="billing", namespace=identity.namespace, uid="uid-2")
    for owner in (identity, other):
        metrics.record_queue(owner, "jobs", pending=1, in_flight=0, desired=1, replicas=1)
        metrics.record_workers(owner, "jobs", up={"a": 1}, down=["b"])
    metrics.forget_taskqueue(identity.namespace, identity.name)
    labels = {"namespace": identity.namespace, "taskqueue": "shop", "queue_name": "jobs"}
    assert REGISTRY.get_sample_value("celery_queue_length", labels) is None
    for name in ("celery_worker_up", "celery_worker_tasks_active"):
        for hostname in ("a", "b"):
            assert REGISTRY.get_sample_value(name, {**labels, "hostname": hostname}) is None
    assert REGISTRY.get_sample_value("celery_queue_length", {**labels, "taskqueue": "billing"}) == 1
    assert worker("celery_worker_up", other, "a") == 1


def test_a_recorded_queue_counts_stuck_workers_from_zero(identity: ObjectIdentity) -> None:
    metrics.record_queue(identity, "jobs", pending=0, in_flight=0, desired=0, replicas=0)
    labels = {"namespace": identity.namespace, "taskqueue": "shop", "queue": "jobs"}
    for evidence in ("heartbeats-stopped", "idle-with-backlog"):
        assert REGISTRY.get_sample_value("celery_operator_stuck_workers_total", {**labels, "evidence": evidence}) == 0
    metrics.STUCK_WORKERS.labels(identity.namespace, "shop", "jobs", "idle-with-backlog").inc()
    metrics.record_queue(identity, "jobs", pending=0, in_flight=0, desired=0, replicas=0)
    assert REGISTRY.get_sample_value("celery_operator_stuck_workers_total",
                                     {**labels, "evidence": "idle-with-backlog"}) == 1
