"""200 TaskQueues of 2 queues each (replicas 0, managed Redis), operator started cold:
time until all are Ready, API requests per TaskQueue to get there, writes per minute once
settled (must be 0), operator peak RSS. Prints a table.

The operator runs as a process under its own ServiceAccount token, so the API server's audit
log (devcluster logs requests made with ServiceAccount tokens) counts exactly its requests,
kopf's watches and lists included.

    .venv/bin/python bench/bench_taskqueues.py [--count 200] [--settle 60] [--dir DIR]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # devcluster runs from the checkout

from bench import figures  # noqa: E402
from devcluster import build, cluster, hostdns  # noqa: E402
from tests.helpers.operator import local_image_settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# a namespace of its own, so no other cluster's `bench` namespace is ever mistaken for this one's
NAMESPACE = f"bench-{uuid.uuid4().hex[:6]}"
OPERATOR_USER = f"system:serviceaccount:{NAMESPACE}:celery-operator"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> str:
    result = subprocess.run([str(build.bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}", *args],
                            input=input, capture_output=True, text=True, check=True)
    return result.stdout


def operator_kubeconfig(admin: Path, target: Path) -> None:
    """A kubeconfig holding only a ServiceAccount token: requests made with it are audited."""
    kubectl(admin, "create", "namespace", NAMESPACE)
    kubectl(admin, "create", "serviceaccount", "celery-operator", "-n", NAMESPACE)
    kubectl(admin, "create", "clusterrolebinding", f"{NAMESPACE}-celery-operator", "--clusterrole=cluster-admin",
            f"--serviceaccount={NAMESPACE}:celery-operator")
    token = kubectl(admin, "create", "token", "celery-operator", "-n", NAMESPACE, "--duration=4h").strip()
    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "operator"
    target.write_text(yaml.safe_dump(config))


def taskqueues(count: int) -> str:
    items = [{
        "apiVersion": "celery-operator.dev/v1alpha1", "kind": "TaskQueue",
        "metadata": {"name": f"tq{i:03d}", "namespace": NAMESPACE},
        # 200 managed Redis pods share the node's 2 cores: requests the size of an idle Redis
        "spec": {"image": "example.invalid/app:1", "app": "myproject",
                 "broker": {"managed": {"resources": {"requests": {"cpu": "5m", "memory": "16Mi"},
                                                      "limits": {"memory": "64Mi"}}}},
                 "queues": [{"name": "high", "replicas": 0}, {"name": "low", "replicas": 0}]},
    } for i in range(count)]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def ready_count(admin: Path) -> int:
    listed = json.loads(kubectl(admin, "get", "taskqueues", "-n", NAMESPACE, "-o", "json"))
    return sum(1 for item in listed["items"]
               for c in item.get("status", {}).get("conditions", [])
               if c["type"] == "Ready" and c["status"] == "True")


def audited_requests(log: Path, since: float, until: float) -> collections.Counter:
    """Requests of the operator's ServiceAccount by verb, counted once each (by audit ID)."""
    seen: dict[str, str] = {}
    for line in log.read_text().splitlines():
        event = json.loads(line)
        if event.get("user", {}).get("username") != OPERATOR_USER:
            continue
        stamp = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
        if since <= stamp <= until:
            seen[event["auditID"]] = event["verb"]
    return collections.Counter(seen.values())


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--settle", type=float, default=60, help="seconds to watch for writes once all are Ready")
    parser.add_argument("--timeout", type=float, default=900)
    figures.add_argument(parser)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-taskqueues-"))
    running = cluster.up(workdir / "cluster")
    admin = running.kubeconfig
    operator_config = workdir / "operator.kubeconfig"
    process = None
    try:
        kubectl(admin, "apply", "--server-side", "-f", str(ROOT / "crds"))
        kubectl(admin, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        operator_kubeconfig(admin, operator_config)
        kubectl(admin, "apply", "-f", "-", input=taskqueues(args.count))
        # on the host, as the tests run it: the brokers' NetworkPolicies let the node network in, and
        # it resolves their Service names through the cluster's DNS, as a pod does
        environment = dict(os.environ, KUBECONFIG=str(operator_config), **local_image_settings(),
                           CELERY_OPERATOR_SOURCE_CIDRS=running.state().node_cidr)
        resolv_conf = hostdns.write_resolv_conf(running.dir, running.state().network.dns_ip)
        command = hostdns.command_with_cluster_dns(resolv_conf, [sys.executable, "-m", "celery_operator",
                                                                 "--all-namespaces"])

        started = time.time()
        log = (workdir / "operator.log").open("w")
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
        ready = 0
        while ready < args.count:
            if time.time() - started > args.timeout:
                raise SystemExit(f"only {ready}/{args.count} Ready after {args.timeout:.0f}s")
            time.sleep(1)
            ready = ready_count(admin)
        all_ready = time.time()
        time.sleep(args.settle)
        settled_until = time.time()
        time.sleep(2)  # let the audit log catch up
        audit = running.logs_dir / "audit.log"
        to_ready = audited_requests(audit, started - 1, all_ready)
        settled = audited_requests(audit, all_ready + 15, settled_until)
        rss = peak_rss_mib(process.pid)
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                print("operator did not stop within 60 s of SIGTERM; killed", file=sys.stderr)
                process.kill()
        cluster.down(running.dir)

    settled_writes = sum(n for verb, n in settled.items() if verb in WRITE_VERBS)
    window = settled_until - all_ready - 15
    print(f"{'figure':<48} {'value':>14}")
    print(f"{'TaskQueues':<48} {args.count:>14}")
    print(f"{'operator start -> all Ready':<48} {all_ready - started:>13.1f}s")
    print(f"{'API requests per TaskQueue to get there':<48} {sum(to_ready.values()) / args.count:>14.2f}")
    print(f"{'  of which writes':<48} {sum(n for v, n in to_ready.items() if v in WRITE_VERBS) / args.count:>14.2f}")
    print(f"{'  by verb':<48} {json.dumps(dict(to_ready)):>14}")
    print(f"{'writes per minute once settled':<48} {settled_writes * 60 / window:>14.1f}")
    print(f"{'requests per minute once settled (all verbs)':<48} {sum(settled.values()) * 60 / window:>14.1f}")
    print(f"{'operator peak RSS':<48} {rss:>12.0f}MiB")
    figures.report(args.figures, [
        figures.Figure(f"{args.count} TaskQueues: operator start → all Ready", all_ready - started, "s"),
        figures.Figure(f"{args.count} TaskQueues: API requests per TaskQueue to get there",
                       sum(to_ready.values()) / args.count, ""),
        figures.exactly(f"{args.count} TaskQueues: writes per minute once settled", settled_writes * 60 / window,
                        "", 0),
        figures.Figure(f"{args.count} TaskQueues: operator peak RSS", rss, "MiB"),
    ])


if __name__ == "__main__":
    main()
