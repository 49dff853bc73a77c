"""Operator takeover figures: the chart's two replicas on a two-node devcluster, the leader stopped,
how long until the standby acts.

Each trial changes a TaskQueue (its queue's concurrency) right after the leader stops, and times,
from that moment:
- lease: the standby holds the Lease (the Lease's holderIdentity, polled every 0.1 s);
- first write: the new leader's first write other than to the Lease (the API server's audit log);
- reconciled: the change is in the worker Deployment.

Two ways the leader stops, alternating trial by trial:
- dead: its container's main process is frozen from the host (SIGSTOP: it renews nothing, as a
  crashed or partitioned leader) and its pod force-deleted at once (the kubelet kills it; had its
  container been restarted instead, the same pod would resume its own Lease at once);
- graceful: its pod is deleted (SIGTERM): it stops kopf and releases the Lease.

    .venv/bin/python bench/bench_operator_takeover.py [--trials 6] [--nodes 2]
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import figures  # noqa: E402
from tests.helpers import operator_ha as ha  # noqa: E402
from tests.helpers.devcluster import DevCluster, own_cluster  # noqa: E402
from tests.helpers.taskqueues import TaskQueues, taskqueue  # noqa: E402
from tests.helpers.waiting import ConditionNotMet, wait_for  # noqa: E402

NAMESPACE, WORKERS = "bench", "takeover-worker-jobs"


def concurrency_of(tqs: TaskQueues) -> str | None:
    deployment = tqs.deployment(WORKERS)
    if deployment is None:
        return None
    container = deployment.spec.template.spec.containers[0]
    command = [*(container.command or []), *(container.args or [])]
    return command[command.index("--concurrency") + 1]


def settled(devcluster: DevCluster) -> tuple[str, str]:
    """Two Ready pods, one holding the Lease: (leader, standby)."""
    def check() -> tuple[str, str] | None:
        pods = ha.operator_pods(devcluster)
        holder = ha.holder(devcluster)
        if len(pods) == 2 and all(ha.ready(p) for p in pods.values()) and holder in pods:
            return holder, next(name for name in pods if name != holder)
        return None
    return wait_for(check, 240, "two Ready operator pods, one leading", interval=0.5)


def trial(devcluster: DevCluster, tqs: TaskQueues, how: str, concurrency: int) -> dict[str, float]:
    leader, standby = settled(devcluster)
    pod = ha.operator_pods(devcluster)[leader]
    if how == "dead":  # frozen, and its pod deleted at once: no restart of its container can renew the Lease
        ha.signal_container(pod, signal.SIGSTOP)
        devcluster.kubectl("delete", "pod", "-n", ha.RELEASE_NAMESPACE, leader, "--grace-period=0", "--force")
    else:
        devcluster.kubectl("delete", "pod", "-n", ha.RELEASE_NAMESPACE, leader, "--wait=false")
    stopped_at, started = ha.utcnow(), time.monotonic()
    tqs.patch_spec("takeover", {"queues": [{"name": "jobs", "replicas": 0, "concurrency": concurrency}]})
    wait_for(lambda: ha.holder(devcluster) == standby, 60, "the standby to hold the Lease", interval=0.1)
    lease = time.monotonic() - started
    wait_for(lambda: concurrency_of(tqs) == str(concurrency), 60, "the change reconciled", interval=0.1)
    reconciled = time.monotonic() - started
    write = wait_for(lambda: ha.first_write_after(devcluster, standby, stopped_at), 30, "the audit log's write")
    return {"lease": lease, "first write": (write.at - stopped_at).total_seconds(), "reconciled": reconciled}


def diagnostics(devcluster: DevCluster) -> str:
    pods = devcluster.kubectl("get", "pods", "-A", "-o", "wide", check=False).stdout
    logs = "\n".join(f"--- {name}\n{ha.pod_log(devcluster, name)[-3000:]}" for name in ha.operator_pods(devcluster))
    return f"lease: {ha.lease(devcluster)}\npods:\n{pods}\n{logs}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=6, help="trials in all, alternating dead and graceful")
    parser.add_argument("--nodes", type=int, default=2)
    figures.add_argument(parser)
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"dead": [], "graceful": []}
    with tempfile.TemporaryDirectory(prefix="bench-takeover-") as workdir, \
            own_cluster(Path(workdir) / "cluster", nodes=args.nodes) as devcluster:
        ha.install(devcluster)
        devcluster.kubectl("create", "namespace", NAMESPACE)
        tqs = TaskQueues(devcluster, NAMESPACE)
        try:
            tqs.apply(taskqueue("takeover", queues=[{"name": "jobs", "replicas": 0, "concurrency": 1}]))
            wait_for(lambda: concurrency_of(tqs) == "1", 120, "the first reconcile")
            for number in range(args.trials):
                how = ("dead", "graceful")[number % 2]
                try:
                    measured = trial(devcluster, tqs, how, concurrency=number + 2)
                except ConditionNotMet:
                    print(diagnostics(devcluster), flush=True)
                    raise
                results[how].append(measured)
                print(f"trial {number + 1} ({how}): " + ", ".join(f"{k} {v:.2f} s" for k, v in measured.items()),
                      flush=True)
        finally:
            tqs.close()
    print("\n| leader | trials | lease p50 / p95 | first write p50 / p95 | reconciled p50 / p95 |")
    print("|---|---|---|---|---|")
    headline: list[figures.Figure] = []
    for how, runs in results.items():
        if not runs:
            continue
        for key, label in (("lease", "Lease taken"), ("reconciled", "change reconciled")):
            headline += [figures.Figure(f"takeover, {how} leader ({len(runs)} trials): {label}, p{percent}",
                                        figures.percentile([r[key] for r in runs], percent / 100), "s") for percent in (50, 95)]
        cells = [f"{figures.percentile([r[key] for r in runs], 0.5):.1f} / {figures.percentile([r[key] for r in runs], 0.95):.1f} s"
                 for key in ("lease", "first write", "reconciled")]
        print(f"| {how} | {len(runs)} | " + " | ".join(cells) + " |")
    figures.report(args.figures, headline)


if __name__ == "__main__":
    main()
