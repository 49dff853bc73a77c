"""`make demo`: the main job on this machine, nothing else set up.

A devcluster (a real node: kubelet on containerd, every image built here); the operator image
installed by `helm install` of our chart, running under the chart's ServiceAccount and RBAC, with
its default Redis and Flower images pointed at the local ones (an air-gapped cluster's settings);
`kubectl apply -f app/examples/`; then a burst of work on both queues, sent by a producer pod of
the app's own image like a web app would, shown in a table refreshed every second (per queue:
pending, in flight, desired, consuming workers, done) while the autoscaled queue's workers scale
from zero up and back down; then a summary that accounts for every task (sent, completed, lost,
duplicated), the peak of workers and the reaction. Ctrl-C stops the load. The cluster keeps
running afterwards so it can be explored; `make demo-down` stops it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import kubernetes

from devcluster import build, cluster, demo_load, images

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / ".devcluster" / "demo"
NAMESPACE = "demo"
OPERATOR_NAMESPACE = "celery-operator"
TASKQUEUE = "shop"
QUEUE = "high_priority"
DEPLOYMENT = f"{TASKQUEUE}-worker-high-priority"
SAMPLE_APP_IMAGE = "ghcr.io/celery-operator/sample-app:0.1.0"   # app/examples/taskqueue.yaml's


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
    """Ready, as this release of the operator sees the TaskQueue's current spec: a demo cluster
    kept from an older release is upgraded by the `helm upgrade` above, and until the new operator
    has reconciled the TaskQueue (and rolled what its CHANGELOG entry says), the old one's Ready stands."""
    taskqueue = tools.get("taskqueue", TASKQUEUE, "-n", NAMESPACE)
    status = taskqueue.get("status", {})
    return (status.get("operatorVersion") == images.operator_version()
            and status.get("observedGeneration") == taskqueue["metadata"]["generation"]
            and any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])))


def apply_examples(tools: Tools) -> None:
    say("kubectl apply -f app/examples/")
    tools.kubectl("create", "namespace", NAMESPACE, check=False)
    print(tools.kubectl("apply", "-n", NAMESPACE, "-f", str(ROOT / "app" / "examples")), end="")
    wait("the TaskQueue to be Ready (managed Redis and the low_priority worker running)",
         lambda: ready_condition(tools), 180)
    print(tools.kubectl("get", "taskqueue,periodicjob,deployment,service", "-n", NAMESPACE))


LOAD_POD = "demo-load"
PRODUCER_LABEL = "celery-operator.dev/producer"
LOADS = [demo_load.QueueLoad(QUEUE, tasks=40, seconds=3.0), demo_load.QueueLoad("low_priority", tasks=10, seconds=1.0)]


def load_pod(plan: str) -> dict:
    """A producer like a web app: the app's image, the broker URL from the TaskQueue's Secret, and
    the label the TaskQueue's NetworkPolicy lets reach its broker."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": LOAD_POD, "labels": {PRODUCER_LABEL: TASKQUEUE, "app.kubernetes.io/name": "demo-load"}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "load", "image": SAMPLE_APP_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["python", "-c", demo_load.PRODUCER_SCRIPT, plan],
                "env": [{"name": "CELERY_BROKER_URL",
                         "valueFrom": {"secretKeyRef": {"name": f"{TASKQUEUE}-broker", "key": "url"}}}],
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
            }],
        },
    }


@dataclass(frozen=True)
class Api:
    core: kubernetes.client.CoreV1Api
    apps: kubernetes.client.AppsV1Api
    custom: kubernetes.client.CustomObjectsApi

    @classmethod
    def connect(cls, kubeconfig: Path) -> "Api":
        client = kubernetes.config.new_client_from_config(str(kubeconfig))
        return cls(kubernetes.client.CoreV1Api(client), kubernetes.client.AppsV1Api(client),
                   kubernetes.client.CustomObjectsApi(client))

    def taskqueue_status(self) -> dict:
        return self.custom.get_namespaced_custom_object(
            "celery-operator.dev", "v1alpha1", NAMESPACE, "taskqueues", TASKQUEUE).get("status", {})

    def autoscaled_replicas(self) -> int:
        return self.apps.read_namespaced_deployment_scale(DEPLOYMENT, NAMESPACE).spec.replicas or 0

    def progress(self) -> demo_load.Progress | None:
        try:
            log = self.core.read_namespaced_pod_log(LOAD_POD, NAMESPACE, tail_lines=1)
        except kubernetes.client.ApiException:
            return None
        return demo_load.Progress.parse(log.strip()) if log else None  # nothing written yet


class TablePrinter:
    """The table redrawn in place on a terminal; appended, one block a second, anywhere else."""

    def __init__(self) -> None:
        self.in_place = sys.stdout.isatty()
        self.drawn = 0

    def show(self, lines: list[str]) -> None:
        if self.in_place and self.drawn:
            sys.stdout.write(f"\x1b[{self.drawn}F\x1b[J")
        print("\n".join(lines), flush=True)
        self.drawn = len(lines)


def finished(rows: list[demo_load.QueueRow], replicas: int) -> bool:
    all_done = all(row.done >= load.tasks for row, load in zip(rows, LOADS))
    return all_done and replicas == 0 and all(row.pending == 0 and row.in_flight == 0 for row in rows)


def watch(api: Api, timeout: float) -> tuple[demo_load.Progress, demo_load.Observed]:
    """Until every task ran and the autoscaled queue is back at zero workers: a fast look (0.1 s)
    until its first worker consumes, for the reaction; then the table once a second. The first
    send's time comes with the producer's first report, which may come after the scale-up."""
    observed, printer, progress = demo_load.Observed(), TablePrinter(), None
    started = time.monotonic()
    last_table = 0.0
    queues = [load.name for load in LOADS]
    while time.monotonic() - started < timeout:
        replicas = api.autoscaled_replicas()
        progress = api.progress() or progress
        rows = demo_load.queue_rows(api.taskqueue_status(), progress, queues)
        observed.saw(time.time(), rows, QUEUE, replicas)
        if time.monotonic() - last_table >= 1:
            last_table = time.monotonic()
            printer.show(demo_load.table(last_table - started, rows))
        if progress and finished(rows, replicas):
            printer.show(demo_load.table(time.monotonic() - started, rows))
            return progress, observed
        time.sleep(0.1 if observed.first_consuming is None else 0.25)
    raise DemoFailed(f"the burst was not done and {QUEUE} back at zero workers within {timeout:.0f}s")


def burst(tools: Tools, api: Api) -> demo_load.Summary:
    described = ", ".join(f"{load.tasks} tasks of {load.seconds:g}s on {load.name}" for load in LOADS)
    say(f"a burst: {described} ({QUEUE} is autoscaled and idle at 0 workers), sent by a producer pod "
        f"labelled {PRODUCER_LABEL}={TASKQUEUE} with the broker URL from the {TASKQUEUE}-broker Secret, "
        "like a web app; every task records its number, so each one is accounted for")
    tools.kubectl("delete", "pod", LOAD_POD, "-n", NAMESPACE, "--ignore-not-found", "--grace-period=0", "--force")
    run = f"{int(time.time())}"
    tools.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(load_pod(demo_load.producer_plan(run, LOADS))))
    # watched from the moment the pod exists: the scale-up can come before the producer's first report
    progress, observed = watch(api, timeout=300)
    summary = demo_load.summarize(LOADS, progress, observed)
    tools.kubectl("delete", "pod", LOAD_POD, "-n", NAMESPACE, "--grace-period=0", "--force", check=False)
    say(summary.line())
    print(tools.kubectl("get", "events", "-n", NAMESPACE, "--field-selector",
                        f"involvedObject.name={TASKQUEUE}", "--sort-by=.lastTimestamp"))
    if summary.lost or summary.completed < summary.sent:
        raise DemoFailed(f"{summary.lost} task(s) lost")
    return summary


def stop_load(tools: Tools) -> None:
    """Ctrl-C: no more work is sent and what waits is dropped; the cluster stays for exploring."""
    tools.kubectl("delete", "pod", LOAD_POD, "-n", NAMESPACE, "--ignore-not-found", "--grace-period=0",
                  "--force", check=False)
    tools.kubectl("exec", "-n", NAMESPACE, "deploy/shop-worker-low-priority", "--", "celery", "-A", "myproject",
                  "purge", "-f", "-Q", ",".join(load.name for load in LOADS), check=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster.demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=DEMO_DIR)
    args = parser.parse_args(argv)
    tools = None
    try:
        say(f"python -m devcluster up --dir {args.dir} (Kubernetes from Go modules, a real node, local images)")
        running = cluster.up(args.dir)
        tools = Tools(running.kubeconfig)
        install_operator(tools)
        apply_examples(tools)
        burst(tools, Api.connect(running.kubeconfig))
    except KeyboardInterrupt:
        if tools is not None:
            print("\nmake demo: interrupted; stopping the load (the producer pod, the waiting messages)", file=sys.stderr)
            stop_load(tools)
        print(f"the cluster in {args.dir} may still be running: `make demo-down` stops it and removes it", file=sys.stderr)
        return 130
    except (DemoFailed, cluster.ClusterError, build.BuildError, images.ImageBuildError) as failure:
        print(f"\nmake demo: {failure}", file=sys.stderr)
        return 1
    say("the demo cluster keeps running; explore it:")
    print(f"  export KUBECONFIG={running.kubeconfig}\n"
          f"  kubectl get tq,pj,deploy -n {NAMESPACE}          # add -w to watch\n"
          f"  kubectl get lease -n {OPERATOR_NAMESPACE} celery-operator     # which of the two operator pods acts\n"
          f"  kubectl logs -n {OPERATOR_NAMESPACE} deploy/celery-operator   # one of them (the other stands by)\n"
          "  make demo-down                                   # stop it all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
