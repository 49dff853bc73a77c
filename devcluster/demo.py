"""`make demo`: the main job on this machine, nothing else set up.

A devcluster (a real node: kubelet on containerd, every image built here); the operator image
installed by `helm install` of our chart, running under the chart's ServiceAccount and RBAC, with
its default Redis and Flower images pointed at the local ones (an air-gapped cluster's settings);
`kubectl apply -f app/examples/`; then a burst of work on the autoscaled queue, sent from inside
the app's own image like a web app would, watched as the workers scale from zero up and back
down. The cluster keeps running afterwards so it can be explored; `make demo-down` stops it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devcluster import build, cluster, images

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / ".devcluster" / "demo"
NAMESPACE = "demo"
OPERATOR_NAMESPACE = "celery-operator"
TASKQUEUE = "shop"
QUEUE = "high_priority"
DEPLOYMENT = f"{TASKQUEUE}-worker-high-priority"


class DemoFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Tools:
    kubeconfig: Path

    def run(self, tool: str, *args: str, input: str | None = None, check: bool = True) -> str:
        result = subprocess.run([str(build.bin_dir() / tool), f"--kubeconfig={self.kubeconfig}", *args],
                                input=input, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise DemoFailed(f"{tool} {' '.join(args)}:\n{result.stderr.strip()}")
        return result.stdout

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.run("kubectl", *args, input=input, check=check)

    def get(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json"))


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def wait(description: str, check, timeout: float) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except DemoFailed:
            result = None
        if result:
            return result
        time.sleep(0.5)
    raise DemoFailed(f"timed out after {timeout:.0f}s waiting for {description}")


def install_operator(tools: Tools) -> None:
    say("helm install celery-operator charts/celery-operator (the operator image, built here)")
    tools.run("helm", "upgrade", "--install", "celery-operator", str(ROOT / "charts" / "celery-operator"),
              "--namespace", OPERATOR_NAMESPACE, "--create-namespace", "--wait", "--timeout", "180s",
              *images.operator_chart_values())
    print(tools.kubectl("get", "deployment,pods", "-n", OPERATOR_NAMESPACE))


def ready_condition(tools: Tools) -> bool:
    status = tools.get("taskqueue", TASKQUEUE, "-n", NAMESPACE).get("status", {})
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))


def apply_examples(tools: Tools) -> None:
    say("kubectl apply -f app/examples/")
    tools.kubectl("create", "namespace", NAMESPACE, check=False)
    print(tools.kubectl("apply", "-n", NAMESPACE, "-f", str(ROOT / "app" / "examples")), end="")
    wait("the TaskQueue to be Ready (managed Redis and the low_priority worker running)",
         lambda: ready_condition(tools), 180)
    print(tools.kubectl("get", "taskqueue,periodicjob,deployment,service", "-n", NAMESPACE))


PRODUCER = """
import sys
from myproject.celery import app
count, seconds = int(sys.argv[1]), float(sys.argv[2])
with app.connection_for_write() as connection:
    for _ in range(count):
        app.send_task("myapp.tasks.sleep", args=[seconds], queue="%s", ignore_result=True, connection=connection)
""" % QUEUE


def queue_line(tools: Tools, started: float) -> tuple[int, int, str]:
    taskqueue = tools.get("taskqueue", TASKQUEUE, "-n", NAMESPACE)
    deployment = tools.get("deployment", DEPLOYMENT, "-n", NAMESPACE)
    queue = next((q for q in taskqueue.get("status", {}).get("queues", []) if q["name"] == QUEUE), {})
    replicas = deployment["spec"].get("replicas", 0)
    ready = deployment.get("status", {}).get("readyReplicas", 0)
    line = (f"{time.monotonic() - started:6.1f}s  pending {queue.get('pending', 0):4}  "
            f"inFlight {queue.get('inFlight', 0):3}  desired {queue.get('desiredReplicas', 0):3}  "
            f"replicas {replicas:3}  ready {ready:3}")
    return replicas, queue.get("pending", 0) + queue.get("inFlight", 0), line


def burst(tools: Tools, tasks: int, seconds: float, watch_for: float) -> None:
    say(f"a burst: {tasks} tasks of {seconds:g}s on {QUEUE} (autoscaled, idle at 0 workers), sent from the "
        "always-on worker's pod, which has the broker URL from the shop-broker Secret like a web app would")
    started = time.monotonic()
    tools.kubectl("exec", "-n", NAMESPACE, "deploy/shop-worker-low-priority", "--", "python", "-c", PRODUCER,
                  str(tasks), str(seconds))
    peak, scaled_up_at, zero_again_at = 0, None, None
    while time.monotonic() - started < watch_for:
        replicas, work, line = queue_line(tools, started)
        print(line, flush=True)
        peak = max(peak, replicas)
        if replicas and scaled_up_at is None:
            scaled_up_at = time.monotonic() - started
        if scaled_up_at is not None and replicas == 0 and work == 0:
            zero_again_at = time.monotonic() - started
            break
        time.sleep(1)
    if scaled_up_at is None or zero_again_at is None:
        raise DemoFailed("the queue did not scale up and back to zero in time")
    say(f"scaled up within {scaled_up_at:.1f}s to at most {peak} workers; back to zero at {zero_again_at:.0f}s "
        "(after the scale-down stabilization window)")
    print(tools.kubectl("get", "events", "-n", NAMESPACE, "--field-selector",
                        f"involvedObject.name={TASKQUEUE}", "--sort-by=.lastTimestamp"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster.demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=DEMO_DIR)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=3.0, help="how long each task works")
    args = parser.parse_args(argv)
    try:
        say(f"python -m devcluster up --dir {args.dir} (Kubernetes from Go modules, a real node, local images)")
        running = cluster.up(args.dir)
        tools = Tools(running.kubeconfig)
        install_operator(tools)
        apply_examples(tools)
        burst(tools, args.tasks, args.seconds, watch_for=240)
    except (DemoFailed, cluster.ClusterError, build.BuildError, images.ImageBuildError) as failure:
        print(f"\nmake demo: {failure}", file=sys.stderr)
        return 1
    say("the demo cluster keeps running; explore it:")
    print(f"  export KUBECONFIG={running.kubeconfig}\n"
          f"  kubectl get tq,pj,deploy -n {NAMESPACE}          # add -w to watch\n"
          f"  kubectl logs -n {OPERATOR_NAMESPACE} deploy/celery-operator   # or any pod\n"
          "  make demo-down                                   # stop it all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
