"""Two operator replicas as the chart deploys them, on two real nodes: exactly one acts.

A devcluster of the test's own with two nodes: `helm install` with the chart's defaults runs two
operator pods (spread over the nodes), each the operator image under the chart's ServiceAccount.
Every request either makes is in the API server's audit log with the pod it came from (a bound
token's user info names its pod), which is how "written by one replica only" is proven.

The leader's death is produced for real: its container's main process is frozen from the host
(SIGSTOP: it renews nothing, as after a node partition or a hung process), and the standby must
take over within the Lease's duration and reconcile a change made after the freeze. Thawed, the old
leader must stop without a single write (it exits and the kubelet restarts it as a standby). A
graceful stop of the new leader (pod deletion) releases the Lease and the standby takes over at once.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import operator_ha as ha
from tests.helpers.devcluster import DevCluster, own_cluster
from tests.helpers.taskqueues import TaskQueues, taskqueue
from tests.helpers.waiting import ConditionNotMet, holds_for, wait_for

# a two-node cluster of its own (its up and down take minutes on a busy machine) plus two takeovers
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

LEASE_DURATION, RETRY_PERIOD = 15, 2  # the chart's defaults
NAMESPACE = "shop"
WORKERS = "ha-worker-jobs"


@pytest.fixture
def two_nodes(tmp_path: Path) -> Iterator[DevCluster]:
    with own_cluster(tmp_path / "cluster", nodes=2) as handle:
        yield handle


def concurrency_of(tqs: TaskQueues) -> str | None:
    deployment = tqs.deployment(WORKERS)
    if deployment is None:
        return None
    command = [*(deployment.spec.template.spec.containers[0].command or []),
               *(deployment.spec.template.spec.containers[0].args or [])]
    return command[command.index("--concurrency") + 1]


def wait_concurrency(tqs: TaskQueues, value: int, timeout: float) -> None:
    wait_for(lambda: concurrency_of(tqs) == str(value), timeout, f"the worker Deployment at concurrency {value}")


def leader_and_standby(devcluster: DevCluster) -> tuple[str, str]:
    def both_ready_one_leads() -> tuple[str, str] | None:
        pods = ha.operator_pods(devcluster)
        holder = ha.holder(devcluster)
        if len(pods) == 2 and all(ha.ready(p) for p in pods.values()) and holder in pods:
            [standby] = set(pods) - {holder}
            return holder, standby
        return None

    return wait_for(both_ready_one_leads, 120, "two Ready operator pods, one holding the Lease", interval=0.5)


def diagnostics(devcluster: DevCluster) -> str:
    pods = devcluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
    logs = "\n".join(f"--- {name}\n{ha.pod_log(devcluster, name)[-3000:]}" for name in ha.operator_pods(devcluster))
    return f"lease: {ha.lease(devcluster)}\npods:\n{pods}\n{logs}"


def test_one_replica_acts_and_the_standby_takes_over(two_nodes: DevCluster) -> None:
    devcluster = two_nodes
    ha.install(devcluster)
    leader, standby = leader_and_standby(devcluster)
    pods = ha.operator_pods(devcluster)
    assert pods[leader]["spec"]["nodeName"] != pods[standby]["spec"]["nodeName"], "spread over the two nodes"

    devcluster.kubectl("create", "namespace", NAMESPACE)
    tqs = TaskQueues(devcluster, NAMESPACE)
    try:
        tqs.apply(taskqueue("ha", queues=[{"name": "jobs", "replicas": 0, "concurrency": 2}]))
        wait_concurrency(tqs, 2, 90)

        # while both run, only the leader acts: the standby asked for nothing but the Lease
        by_standby = [r for r in ha.requests(devcluster) if r.pod == standby]
        assert by_standby, "the audit log names the standby's pod (else this proves nothing)"
        assert {(r.verb, r.resource, r.namespace, r.name) for r in by_standby} == {
            ("get", "leases", ha.RELEASE_NAMESPACE, ha.LEASE)}, by_standby
        by_leader = [r for r in ha.requests(devcluster) if r.pod == leader and r.write]
        assert {r.resource for r in by_leader} >= {"deployments", "leases"}, by_leader
        standby_log = ha.pod_log(devcluster, standby)
        assert f"stands by: the Lease {ha.RELEASE_NAMESPACE}/{ha.LEASE} is held by {leader}" in standby_log
        for activity in ("Handler", "celery-operator configured", "reconcile"):
            assert activity not in standby_log, f"the standby's log shows {activity!r}:\n{standby_log}"
        assert f"{leader} leads" in ha.pod_log(devcluster, leader)

        # the leader stops renewing (frozen); a change made after that is reconciled by the standby
        frozen = pods[leader]
        ha.signal_container(frozen, signal.SIGSTOP)
        frozen_at = ha.utcnow()
        started = time.monotonic()
        tqs.patch_spec("ha", {"queues": [{"name": "jobs", "replicas": 0, "concurrency": 3}]})
        try:
            wait_for(lambda: ha.holder(devcluster) == standby, LEASE_DURATION + RETRY_PERIOD + 10,
                     "the standby to take the Lease over", interval=0.2)
            took_over = time.monotonic() - started
        except ConditionNotMet as timeout:
            raise AssertionError(f"{timeout}\n{diagnostics(devcluster)}") from None
        finally:  # before the kubelet's liveness probe gives up on the frozen container
            thawed_at = ha.utcnow()
            ha.signal_container(frozen, signal.SIGCONT)
        try:
            wait_concurrency(tqs, 3, 60)
        except ConditionNotMet as timeout:
            raise AssertionError(f"{timeout}\n{diagnostics(devcluster)}") from None
        reconciled = time.monotonic() - started
        print(f"takeover after a frozen leader: Lease in {took_over:.1f} s, change reconciled in {reconciled:.1f} s")
        # not before the Lease expired by the standby's clock: it counts a Lease's duration from when
        # it saw the last renewal, which came after the leader made it (the last renewal may have been
        # up to a retry period before the freeze, more on a loaded machine: time from the freeze says little)
        lease_writes = [r for r in ha.requests(devcluster) if r.resource == "leases" and r.write]
        last_renewal = max(r.at for r in lease_writes if r.pod == leader and r.code < 400 and r.at <= thawed_at)
        taken = min(r.at for r in lease_writes if r.pod == standby)
        assert (taken - last_renewal).total_seconds() >= LEASE_DURATION - 0.5, (last_renewal, taken)
        first = ha.first_write_after(devcluster, standby, frozen_at)
        assert first is not None and first.at < ha.utcnow()

        # thawed, the old leader stops without writing: the kubelet restarts it as a standby
        def restarted() -> bool:
            [status] = ha.operator_pods(devcluster)[leader]["status"]["containerStatuses"]
            terminated = status.get("lastState", {}).get("terminated") or {}
            return status["restartCount"] >= 1 and terminated.get("exitCode") == 3

        wait_for(restarted, 60, "the thawed old leader to exit with code 3 and be restarted", interval=0.5)
        late = [r for r in ha.requests(devcluster) if r.pod == leader and r.write and r.at >= thawed_at]
        assert not late, f"the old leader wrote after it lost the Lease: {late}"
        assert "could not renew" in ha.pod_log(devcluster, leader, previous=True) or \
            f"is held by {standby} now" in ha.pod_log(devcluster, leader, previous=True)
        wait_for(lambda: f"is held by {standby}" in ha.pod_log(devcluster, leader), 60,
                 "the restarted old leader to stand by")
        holds_for(lambda: ha.holder(devcluster) == standby, 2 * RETRY_PERIOD, "the new leader keeps the Lease")

        # a graceful stop releases the Lease: the standby takes over at once, not after its duration
        devcluster.kubectl("delete", "pod", "-n", ha.RELEASE_NAMESPACE, standby, "--wait=false")
        started = time.monotonic()
        tqs.patch_spec("ha", {"queues": [{"name": "jobs", "replicas": 0, "concurrency": 4}]})
        try:
            wait_for(lambda: ha.holder(devcluster) == leader, 2 * RETRY_PERIOD + 8,
                     "the old leader to take the released Lease", interval=0.2)
            handed_over = time.monotonic() - started
            wait_concurrency(tqs, 4, 60)
        except ConditionNotMet as timeout:
            raise AssertionError(f"{timeout}\n{diagnostics(devcluster)}") from None
        print(f"takeover after a graceful stop: Lease in {handed_over:.1f} s")
        assert handed_over < LEASE_DURATION - 1, "the Lease was released, not waited out"
    finally:
        tqs.close()
    denied = [r for r in ha.requests(devcluster) if r.code == 403]
    assert not denied, f"the chart's RBAC denied: {denied}"
