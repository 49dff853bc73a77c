"""The node agent behaves like a kubelet where a program can tell: processes per pod, graceful
termination, env resolution, crash-loop back-off, ServiceAccount credentials under RBAC,
Services by name, a real Celery worker, and an agent restart that adopts its pods."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import kubernetes
import pytest
import yaml

from tests.helpers.devcluster import DevCluster
from tests.helpers.processes import start_redis
from tests.helpers.waiting import wait_for

pytestmark = pytest.mark.cluster

PYTHON_IMAGE = "python:3.12-slim"  # ignored by the agent, but a real cluster would need it


# --- helpers ---------------------------------------------------------------------------------------

def apply(devcluster: DevCluster, namespace: str, *objects: dict) -> None:
    devcluster.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all(objects))


def core(devcluster: DevCluster) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(devcluster.api_client())


def apps(devcluster: DevCluster) -> kubernetes.client.AppsV1Api:
    return kubernetes.client.AppsV1Api(devcluster.api_client())


def pods_of(api: kubernetes.client.CoreV1Api, namespace: str, selector: str) -> list:
    return api.list_namespaced_pod(namespace, label_selector=selector).items


def is_ready(pod: Any) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def python_container(name: str, program: str, **extra: Any) -> dict:
    return {"name": name, "image": PYTHON_IMAGE, "command": ["python", "-u", "-c", textwrap.dedent(program)], **extra}


def deployment(name: str, replicas: int, containers: list[dict], grace: int = 30, **pod_spec: Any) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"terminationGracePeriodSeconds": grace, "containers": containers, **pod_spec}}},
    }


def bare_pod(name: str, containers: list[dict], restart_policy: str = "Never", **spec: Any) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"restartPolicy": restart_policy, "containers": containers, **spec}}


def env_var(name: str, **source: Any) -> dict:
    return {"name": name, **source}


def field_ref(path: str) -> dict:
    return {"valueFrom": {"fieldRef": {"fieldPath": path}}}


def processes_with_marker(marker: str) -> dict[int, str]:
    """pid -> command line of this machine's processes whose environment holds TEST_MARKER=marker."""
    found = {}
    wanted = f"TEST_MARKER={marker}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] == "Z":
            continue
        if wanted in environ.split(b"\0"):
            found[int(entry)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def pod_log(devcluster: DevCluster, namespace: str, pod: str, container: str) -> str:
    path = devcluster.dir / "pods" / f"{namespace}_{pod}" / "logs" / f"{container}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def container_state(pod: Any, name: str) -> Any:
    for status in pod.status.container_statuses or []:
        if status.name == name:
            return status
    return None


def read_pod(api: kubernetes.client.CoreV1Api, namespace: str, name: str) -> Any | None:
    try:
        return api.read_namespaced_pod(name, namespace)
    except kubernetes.client.ApiException as failure:
        if failure.status == 404:
            return None
        raise


def scale(devcluster: DevCluster, namespace: str, name: str, replicas: int) -> None:
    devcluster.kubectl("scale", "-n", namespace, f"deployment/{name}", f"--replicas={replicas}")


# --- a Deployment's processes and their termination ----------------------------------------------------

RECORDING_PROGRAM = """
    import os, pathlib, signal, socket, sys, time
    record = pathlib.Path(os.environ["RECORD_DIR"]) / os.environ["POD_NAME"]
    record.write_text(f"started {socket.gethostname()}\\n")
    def on_sigterm(number, frame):
        with record.open("a") as out:
            out.write("SIGTERM\\n")
        if os.environ.get("IGNORE_SIGTERM") != "yes":
            with record.open("a") as out:
                out.write("exiting\\n")
            sys.exit(0)
    signal.signal(signal.SIGTERM, on_sigterm)
    while True:
        time.sleep(0.1)
"""


def recording_deployment(name: str, replicas: int, record_dir: Path, marker: str, ignore_sigterm: bool,
                         grace: int) -> dict:
    container = python_container("main", RECORDING_PROGRAM, env=[
        env_var("RECORD_DIR", value=str(record_dir)), env_var("TEST_MARKER", value=marker),
        env_var("IGNORE_SIGTERM", value="yes" if ignore_sigterm else "no"),
        env_var("POD_NAME", **field_ref("metadata.name"))])
    return deployment(name, replicas, [container], grace=grace)


def test_deployment_runs_one_process_per_pod_and_scales_down_gracefully(
        devcluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    api = core(devcluster)
    marker = f"{namespace}-graceful"
    apply(devcluster, namespace, recording_deployment("graceful", 3, tmp_path, marker, False, grace=30))

    def three_ready_pods() -> list:
        pods = pods_of(api, namespace, "app=graceful")
        return pods if len(pods) == 3 and all(is_ready(p) for p in pods) else []

    pods = wait_for(three_ready_pods, 60, "3 Ready pods")
    processes = wait_for(lambda: (found := processes_with_marker(marker)) and len(found) == 3 and found,
                         30, "3 pod processes")
    assert len(processes) == 3, processes
    names = {p.metadata.name for p in pods}
    for pod in pods:
        # each pod's process sees its pod name as hostname, and the pod has an IP of its own
        assert wait_for(lambda: (tmp_path / pod.metadata.name).exists(), 10, "start record")
        assert (tmp_path / pod.metadata.name).read_text().startswith(f"started {pod.metadata.name}")
    assert len({p.status.pod_ip for p in pods}) == 3

    scale(devcluster, namespace, "graceful", 1)
    wait_for(lambda: len(pods_of(api, namespace, "app=graceful")) == 1, 60, "two pods deleted")
    survivor = pods_of(api, namespace, "app=graceful")[0].metadata.name
    assert survivor in names
    wait_for(lambda: len(processes_with_marker(marker)) == 1, 30, "two processes gone")
    for name in names - {survivor}:
        assert (tmp_path / name).read_text().splitlines()[1:] == ["SIGTERM", "exiting"]
    assert (tmp_path / survivor).read_text().splitlines() == [f"started {survivor}"]


def test_a_process_that_ignores_sigterm_is_killed_after_its_grace_period(
        devcluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    api = core(devcluster)
    marker = f"{namespace}-stubborn"
    grace = 4
    apply(devcluster, namespace, recording_deployment("stubborn", 1, tmp_path, marker, True, grace=grace))
    pod = wait_for(lambda: [p for p in pods_of(api, namespace, "app=stubborn") if is_ready(p)], 60, "a Ready pod")[0]
    wait_for(lambda: len(processes_with_marker(marker)) == 1, 30, "its process")
    record = tmp_path / pod.metadata.name

    scale(devcluster, namespace, "stubborn", 0)
    wait_for(lambda: "SIGTERM" in record.read_text(), 30, "SIGTERM to reach the process")
    sigterm_at = time.monotonic()
    # it ignores SIGTERM: still running well inside the grace period ...
    time.sleep(grace / 2)
    assert len(processes_with_marker(marker)) == 1, "killed before its grace period was over"
    # ... and SIGKILLed once it is over, after which the pod object goes
    wait_for(lambda: not processes_with_marker(marker), grace + 10, "the SIGKILL")
    killed_after = time.monotonic() - sigterm_at
    assert grace - 1 <= killed_after <= grace + 5, killed_after
    assert record.read_text().splitlines()[1:] == ["SIGTERM"]
    wait_for(lambda: read_pod(api, namespace, pod.metadata.name) is None, 30, "the pod to be deleted")


def test_pre_stop_hook_runs_before_sigterm(devcluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    api = core(devcluster)
    marker = f"{namespace}-prestop"
    spec = recording_deployment("prestop", 1, tmp_path, marker, False, grace=30)
    container = spec["spec"]["template"]["spec"]["containers"][0]
    container["lifecycle"] = {"preStop": {"exec": {"command": [
        "sh", "-c", 'sleep 1; echo "preStop $HOSTNAME" >> "$RECORD_DIR/$POD_NAME"']}}}
    apply(devcluster, namespace, spec)
    pod = wait_for(lambda: [p for p in pods_of(api, namespace, "app=prestop") if is_ready(p)], 60, "a Ready pod")[0]
    wait_for(lambda: (tmp_path / pod.metadata.name).exists(), 30, "the start record")
    scale(devcluster, namespace, "prestop", 0)
    wait_for(lambda: not pods_of(api, namespace, "app=prestop"), 60, "the pod to be deleted")
    assert (tmp_path / pod.metadata.name).read_text().splitlines()[1:] == [
        f"preStop {pod.metadata.name}", "SIGTERM", "exiting"]


def test_init_containers_run_in_order_before_the_containers(
        devcluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    api = core(devcluster)
    record = tmp_path / "order"
    step = "import os; open(os.environ['RECORD'], 'a').write(os.environ['STEP'] + '\\n')"
    def container(name: str) -> dict:
        return python_container(name, step, env=[env_var("RECORD", value=str(record)), env_var("STEP", value=name)])
    apply(devcluster, namespace, bare_pod("inits", [container("main")], initContainers=[
        container("first"), container("second")]))
    wait_for(lambda: read_pod(api, namespace, "inits").status.phase == "Succeeded", 60, "the pod to succeed")
    assert record.read_text().splitlines() == ["first", "second", "main"]
    pod = read_pod(api, namespace, "inits")
    assert [s.name for s in pod.status.init_container_statuses] == ["first", "second"]
    assert all(s.state.terminated.reason == "Completed" for s in pod.status.init_container_statuses)
    conditions = {c.type: c.status for c in pod.status.conditions}
    assert conditions["Initialized"] == "True" and conditions["Ready"] == "False"
    events = api.list_namespaced_event(namespace, field_selector="involvedObject.name=inits").items
    assert {"Pulled", "Created", "Started"} <= {event.reason for event in events}


def test_kubectl_logs_reads_the_container_log(devcluster: DevCluster, namespace: str) -> None:
    api = core(devcluster)
    apply(devcluster, namespace, bare_pod("talker", [python_container("main", "print('line one'); print('line two')")]))
    wait_for(lambda: read_pod(api, namespace, "talker").status.phase == "Succeeded", 60, "the pod to succeed")
    assert devcluster.kubectl("logs", "-n", namespace, "talker").stdout == "line one\nline two\n"
    assert devcluster.kubectl("logs", "-n", namespace, "talker", "--tail=1").stdout == "line two\n"
    cli = subprocess.run([sys.executable, "-m", "devcluster", "logs", f"{namespace}/talker", "--dir",
                          str(devcluster.dir)], capture_output=True, text=True, timeout=30)
    assert cli.stdout == "line one\nline two\n", cli.stderr


# --- environment ------------------------------------------------------------------------------------

ENV_DUMP = """
    import json, os, pathlib, sys
    pathlib.Path(os.environ["DUMP_TO"]).write_text(json.dumps({"env": dict(os.environ), "argv": sys.argv[1:]}))
"""


def test_env_from_secret_config_map_and_field_refs_with_expansion(
        devcluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    api = core(devcluster)
    dump = tmp_path / "env.json"
    apply(devcluster, namespace,
          {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"password": "s3cr$t"}},
          {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
           "data": {"LEVEL": "debug", "COLOR": "blue"}})
    container = python_container("main", ENV_DUMP, args=["$(POD_NAME)", "$$(POD_NAME)", "$(UNDEFINED)"], env=[
        env_var("DUMP_TO", value=str(dump)),
        env_var("POD_NAME", **field_ref("metadata.name")),
        env_var("POD_NAMESPACE", **field_ref("metadata.namespace")),
        env_var("POD_IP", **field_ref("status.podIP")),
        env_var("NODE", **field_ref("spec.nodeName")),
        env_var("TEAM", **field_ref("metadata.labels['team']")),
        env_var("PASSWORD", valueFrom={"secretKeyRef": {"name": "creds", "key": "password"}}),
        env_var("URL", value="redis://:$(PASSWORD)@$(POD_IP):6379/$(CFG_LEVEL)"),
        env_var("ESCAPED", value="$$(PASSWORD)"),
        env_var("LATER", value="$(DEFINED_BELOW)"),
        env_var("DEFINED_BELOW", value="x"),
    ], envFrom=[{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}])
    pod = bare_pod("env-dump", [container])
    pod["metadata"]["labels"]["team"] = "blue"
    apply(devcluster, namespace, pod)

    wait_for(lambda: read_pod(api, namespace, "env-dump").status.phase == "Succeeded", 60, "the pod to succeed")
    result = json.loads(dump.read_text())
    env, argv = result["env"], result["argv"]
    status = read_pod(api, namespace, "env-dump").status
    assert env["POD_NAME"] == "env-dump" and env["POD_NAMESPACE"] == namespace
    assert env["POD_IP"] == status.pod_ip and env["NODE"] == devcluster.node_name
    assert env["TEAM"] == "blue"
    assert env["PASSWORD"] == "s3cr$t"
    assert env["URL"] == f"redis://:s3cr$t@{status.pod_ip}:6379/debug"
    assert env["ESCAPED"] == "$(PASSWORD)" and env["LATER"] == "$(DEFINED_BELOW)"
    assert env["CFG_LEVEL"] == "debug" and env["CFG_COLOR"] == "blue"
    assert env["HOSTNAME"] == "env-dump"
    assert "KUBERNETES_SERVICE_HOST" not in env
    assert argv == ["env-dump", "$(POD_NAME)", "$(UNDEFINED)"]
    terminated = container_state(read_pod(api, namespace, "env-dump"), "main").state.terminated
    assert terminated.exit_code == 0 and terminated.reason == "Completed"


def test_a_missing_secret_holds_the_container_until_it_exists(
        devcluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    api = core(devcluster)
    dump = tmp_path / "env.json"
    container = python_container("main", ENV_DUMP, env=[
        env_var("DUMP_TO", value=str(dump)),
        env_var("TOKEN", valueFrom={"secretKeyRef": {"name": "late", "key": "token"}})])
    apply(devcluster, namespace, bare_pod("waits", [container]))

    def config_error() -> Any:
        state = container_state(read_pod(api, namespace, "waits"), "main")
        waiting = state and state.state.waiting
        return waiting if waiting and waiting.reason == "CreateContainerConfigError" else None

    waiting = wait_for(config_error, 30, "CreateContainerConfigError")
    assert waiting.message == 'secret "late" not found'
    assert read_pod(api, namespace, "waits").status.phase == "Pending"
    assert not dump.exists()

    apply(devcluster, namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "late"},
                                  "stringData": {"token": "finally"}})
    wait_for(lambda: read_pod(api, namespace, "waits").status.phase == "Succeeded", 60,
             "the pod to start once the Secret exists")
    assert json.loads(dump.read_text())["env"]["TOKEN"] == "finally"


def test_a_container_without_command_waits_with_a_clear_reason(devcluster: DevCluster, namespace: str) -> None:
    api = core(devcluster)
    apply(devcluster, namespace, bare_pod("no-command", [{"name": "main", "image": "nginx:1.27"}]))

    def waiting() -> Any:
        state = container_state(read_pod(api, namespace, "no-command"), "main")
        return state and state.state.waiting and state.state.waiting.reason == "ImageEntrypointNotRunnable" and state

    state = wait_for(waiting, 30, "ImageEntrypointNotRunnable")
    assert "no command" in state.state.waiting.message
    assert read_pod(api, namespace, "no-command").status.phase == "Pending"


# --- restarts ----------------------------------------------------------------------------------------

def test_a_crash_looping_container_backs_off(devcluster: DevCluster, namespace: str) -> None:
    api = core(devcluster)
    apply(devcluster, namespace, bare_pod("crasher", [python_container("main", "import sys; sys.exit(3)")],
                                          restart_policy="Always"))

    def backing_off_after_two_restarts() -> Any:
        state = container_state(read_pod(api, namespace, "crasher"), "main")
        if state and state.restart_count >= 2 and state.state.waiting \
                and state.state.waiting.reason == "CrashLoopBackOff":
            return state
        return None

    started = time.monotonic()
    state = wait_for(backing_off_after_two_restarts, 60, "restartCount 2 and CrashLoopBackOff")
    # the first restart is immediate, the second waits 10 s
    assert time.monotonic() - started >= 9
    assert state.last_state.terminated.exit_code == 3 and state.last_state.terminated.reason == "Error"
    assert "back-off" in state.state.waiting.message
    assert read_pod(api, namespace, "crasher").status.phase == "Running"
    assert not is_ready(read_pod(api, namespace, "crasher"))
    counts = [state.restart_count]
    counts.append(wait_for(lambda: (c := container_state(read_pod(api, namespace, "crasher"), "main").restart_count)
                           > counts[0] and c, 40, "another restart after 20 s"))
    assert counts[1] > counts[0]


def test_liveness_failure_restarts_and_readiness_gates_ready(
        devcluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    api = core(devcluster)
    flag = tmp_path / "healthy"
    program = """
        import time
        while True:
            time.sleep(0.2)
    """
    container = python_container(
        "main", program,
        readinessProbe={"exec": {"command": ["test", "-e", str(flag)]}, "periodSeconds": 1},
        livenessProbe={"exec": {"command": ["sh", "-c", f"test -e {flag} || test ! -e {flag}.dead"]},
                       "periodSeconds": 1, "failureThreshold": 2})
    apply(devcluster, namespace, bare_pod("probed", [container], restart_policy="Always",
                                          terminationGracePeriodSeconds=2))
    wait_for(lambda: container_state(read_pod(api, namespace, "probed"), "main") is not None
             and container_state(read_pod(api, namespace, "probed"), "main").started, 30, "the container to start")
    assert not is_ready(read_pod(api, namespace, "probed"))
    flag.write_text("")
    wait_for(lambda: is_ready(read_pod(api, namespace, "probed")), 15, "readiness once the probe passes")
    flag.unlink()
    Path(f"{flag}.dead").write_text("")
    wait_for(lambda: not is_ready(read_pod(api, namespace, "probed")), 15, "not ready once the probe fails")
    state = wait_for(lambda: (s := container_state(read_pod(api, namespace, "probed"), "main")).restart_count >= 1
                     and s, 30, "a restart after the liveness probe failed")
    assert state.last_state.terminated is not None


def test_active_deadline_fails_the_pod(devcluster: DevCluster, namespace: str) -> None:
    api = core(devcluster)
    apply(devcluster, namespace, bare_pod("deadline", [python_container("main", "import time; time.sleep(600)")],
                                          restart_policy="Always", activeDeadlineSeconds=3,
                                          terminationGracePeriodSeconds=2))
    started = time.monotonic()
    wait_for(lambda: read_pod(api, namespace, "deadline").status.phase == "Failed", 30, "the pod to fail")
    assert time.monotonic() - started >= 2
    pod = read_pod(api, namespace, "deadline")
    assert pod.status.reason == "DeadlineExceeded"
    assert container_state(pod, "main").state.terminated.exit_code == 143  # SIGTERM, not handled


# --- ServiceAccount -----------------------------------------------------------------------------------

RBAC_PROGRAM = """
    import json, os, pathlib
    import kubernetes
    kubernetes.config.load_config()
    core = kubernetes.client.CoreV1Api()
    namespace = os.environ["NAMESPACE"]
    outcome = {"kubeconfig": os.environ.get("KUBECONFIG")}
    review = kubernetes.client.AuthenticationV1Api().create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    outcome["user"] = review.status.user_info.username
    for name, call in [("list pods", lambda: core.list_namespaced_pod(namespace)),
                       ("list secrets", lambda: core.list_namespaced_secret(namespace)),
                       ("list pods elsewhere", lambda: core.list_namespaced_pod("kube-system"))]:
        try:
            call()
            outcome[name] = 200
        except kubernetes.client.ApiException as failure:
            outcome[name] = failure.status
    pathlib.Path(os.environ["DUMP_TO"]).write_text(json.dumps(outcome))
"""


def test_service_account_kubeconfig_is_allowed_what_its_role_grants(
        devcluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    api = core(devcluster)
    dump = tmp_path / "rbac.json"
    apply(devcluster, namespace,
          {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}},
          {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
           "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]},
          {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
           "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]})
    container = python_container("main", RBAC_PROGRAM, env=[env_var("DUMP_TO", value=str(dump)),
                                                            env_var("NAMESPACE", **field_ref("metadata.namespace"))])
    apply(devcluster, namespace, bare_pod("rbac", [container], serviceAccountName="reader"))
    wait_for(lambda: read_pod(api, namespace, "rbac").status.phase in ("Succeeded", "Failed"), 60, "the pod to end")
    assert read_pod(api, namespace, "rbac").status.phase == "Succeeded", pod_log(devcluster, namespace, "rbac", "main")
    outcome = json.loads(dump.read_text())
    assert outcome["user"] == f"system:serviceaccount:{namespace}:reader"
    assert outcome["list pods"] == 200
    assert outcome["list secrets"] == 403
    assert outcome["list pods elsewhere"] == 403
    assert outcome["kubeconfig"].startswith(str(devcluster.dir / "pods" / f"{namespace}_rbac"))


def test_automount_false_gives_no_credentials(devcluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    api = core(devcluster)
    dump = tmp_path / "env.json"
    container = python_container("main", ENV_DUMP, env=[env_var("DUMP_TO", value=str(dump))])
    apply(devcluster, namespace, bare_pod("no-token", [container], automountServiceAccountToken=False))
    wait_for(lambda: read_pod(api, namespace, "no-token").status.phase == "Succeeded", 60, "the pod to succeed")
    assert "KUBECONFIG" not in json.loads(dump.read_text())["env"]


# --- Services -----------------------------------------------------------------------------------------

HTTP_PROGRAM = """
    import http.server, os, socket
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"{socket.gethostname()} {self.client_address[0]}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    http.server.HTTPServer((os.environ["POD_IP"], 8080), Handler).serve_forever()
"""


def test_a_service_resolves_by_name_and_forwards_to_ready_pods(devcluster: DevCluster, namespace: str) -> None:
    api = core(devcluster)
    server = python_container("web", HTTP_PROGRAM, env=[env_var("POD_IP", **field_ref("status.podIP"))],
                              ports=[{"name": "http", "containerPort": 8080}],
                              readinessProbe={"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1})
    apply(devcluster, namespace, deployment("web", 2, [server], grace=5),
          {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
           "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}})
    pods = wait_for(lambda: (found := pods_of(api, namespace, "app=web")) and len(found) == 2
                    and all(is_ready(p) for p in found) and found, 60, "2 Ready pods")
    cluster_ip = api.read_namespaced_service("web", namespace).spec.cluster_ip

    def fetch(url: str) -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    answers = set()
    for _ in range(20):
        answers.add(wait_for(lambda: fetch(f"http://web.{namespace}.svc/"), 30, "the Service to answer"))
    assert {answer.split()[0] for answer in answers} == {p.metadata.name for p in pods}
    assert fetch(f"http://web.{namespace}.svc.cluster.local/").split()[0] in {p.metadata.name for p in pods}
    assert fetch(f"http://{cluster_ip}/")
    # each pod binds only its own IP: nothing answers at that port on the node's address
    with pytest.raises(OSError):
        fetch(f"http://{pods[0].status.host_ip}:8080/")

    # from inside a pod, by the short `svc.namespace` name
    client = python_container("client", f"""
        import urllib.request
        print(urllib.request.urlopen("http://web.{namespace}/", timeout=5).read().decode())
    """)
    apply(devcluster, namespace, bare_pod("client", [client]))
    wait_for(lambda: read_pod(api, namespace, "client").status.phase == "Succeeded", 60, "the client pod")
    assert pod_log(devcluster, namespace, "client", "client").split()[0] in {p.metadata.name for p in pods}

    devcluster.kubectl("delete", "-n", namespace, "service", "web")
    wait_for(lambda: f"web.{namespace}.svc" not in Path("/etc/hosts").read_text(), 30, "the name to go")


# --- Celery ------------------------------------------------------------------------------------------

def recorded_runs(redis_url: str, key: str) -> list[dict]:
    import redis

    with redis.Redis.from_url(redis_url) as client:
        return [json.loads(entry) for entry in client.lrange(key, 0, -1)]


def test_a_celery_worker_consumes_tasks_and_finishes_them_on_scale_down(
        devcluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    """The sample app (app/myproject, importable in pods by default) as a worker Deployment."""
    from celery import Celery

    api = core(devcluster)
    redis_server = start_redis(tmp_path / "redis")
    producer = Celery(broker=redis_server.url, backend=redis_server.url)
    try:
        worker = {
            "name": "worker", "image": PYTHON_IMAGE,
            "command": ["celery", "-A", "myproject", "worker", "-Q", "q", "--hostname", "q@%h",
                        "--concurrency", "1", "--prefetch-multiplier", "1", "--loglevel", "INFO"],
            "env": [env_var("CELERY_BROKER_URL", value=redis_server.url),
                    env_var("CELERY_RESULT_BACKEND", value=redis_server.url)],
        }
        apply(devcluster, namespace, deployment("celery", 1, [worker], grace=30))
        pod = wait_for(lambda: [p for p in pods_of(api, namespace, "app=celery") if is_ready(p)], 60,
                       "a Ready worker pod")[0]
        pod_name = pod.metadata.name

        first = producer.send_task("myapp.tasks.record", args=["runs", "first"], queue="q")
        assert first.get(timeout=90) == first.id
        assert recorded_runs(redis_server.url, "runs") == [{"id": first.id, "value": "first",
                                                            "hostname": f"q@{pod_name}"}]

        slow = producer.send_task("myapp.tasks.record", args=["runs", "slow", 5], queue="q")
        wait_for(lambda: f"Task myapp.tasks.record[{slow.id}] received"
                 in pod_log(devcluster, namespace, pod_name, "worker"), 30, "the slow task to start")
        scale(devcluster, namespace, "celery", 0)
        wait_for(lambda: (found := read_pod(api, namespace, pod_name)) is None or found.metadata.deletion_timestamp,
                 30, "the pod's termination to begin")
        assert not slow.ready(), "the task should still be running when the worker is told to stop"
        assert slow.get(timeout=60) == slow.id
        assert recorded_runs(redis_server.url, "runs")[1] == {"id": slow.id, "value": "slow",
                                                               "hostname": f"q@{pod_name}"}
        wait_for(lambda: not pods_of(api, namespace, "app=celery"), 60, "the worker pod to go")
        log = pod_log(devcluster, namespace, pod_name, "worker")
        assert f"Task myapp.tasks.record[{slow.id}] succeeded" in log and "WorkerLostError" not in log, log[-3000:]
    finally:
        producer.close()
        redis_server.stop()


# --- agent restart ------------------------------------------------------------------------------------

def agent_process(devcluster: DevCluster) -> tuple[int, list[str]]:
    pid, _start = (devcluster.dir / "pids" / "agent.pid").read_text().split()
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    return int(pid), [part.decode() for part in argv]


def restart_agent(devcluster: DevCluster, between: Callable[[], None] = lambda: None) -> None:
    """SIGTERM the agent, run `between` while it is down, start it again as `devcluster up` did."""
    pid, argv = agent_process(devcluster)
    os.kill(pid, signal.SIGTERM)

    def exited() -> bool:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z"
        except OSError:
            return True

    wait_for(exited, 30, "the agent to stop")
    between()
    with (devcluster.dir / "logs" / "agent.log").open("ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, cwd=devcluster.dir)
    start = Path(f"/proc/{process.pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]
    (devcluster.dir / "pids" / "agent.pid").write_text(f"{process.pid} {start}\n")


def test_restarting_the_agent_neither_duplicates_nor_orphans_pod_processes(
        devcluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    api = core(devcluster)
    marker = f"{namespace}-adopt"
    apply(devcluster, namespace, recording_deployment("adopt", 2, tmp_path, marker, False, grace=30))
    orphan_marker = f"{namespace}-orphan"
    orphan = python_container("main", "import time\nwhile True: time.sleep(1)",
                              env=[env_var("TEST_MARKER", value=orphan_marker)])
    apply(devcluster, namespace, bare_pod("orphan", [orphan]))
    pods = wait_for(lambda: (found := pods_of(api, namespace, "app=adopt")) and len(found) == 2
                    and all(is_ready(p) for p in found) and found, 60, "2 Ready pods")
    wait_for(lambda: is_ready(read_pod(api, namespace, "orphan")), 60, "the orphan-to-be")
    before = wait_for(lambda: (found := processes_with_marker(marker)) and len(found) == 2 and found, 30,
                      "2 processes")
    wait_for(lambda: len(processes_with_marker(orphan_marker)) == 1, 30, "the orphan's process")

    def force_delete_orphan() -> None:
        # while the agent is down, the pod object goes without the agent seeing it
        devcluster.kubectl("delete", "-n", namespace, "pod", "orphan", "--force", "--grace-period=0")

    log = devcluster.dir / "logs" / "agent.log"
    synced_before = log.read_text().count("is running")
    restart_agent(devcluster, between=force_delete_orphan)
    wait_for(lambda: log.read_text().count("is running") > synced_before, 30, "the new agent's first sync")
    wait_for(lambda: not processes_with_marker(orphan_marker), 30, "the orphaned process to be killed")
    # the node is ready again and still runs the very same processes, no more
    wait_for(lambda: any(c.type == "Ready" and c.status == "True"
                         for c in api.read_node(devcluster.node_name).status.conditions), 30, "the node")
    time.sleep(3)  # a wrongly duplicating agent would have started processes by now
    assert processes_with_marker(marker) == before
    for pod in pods_of(api, namespace, "app=adopt"):
        assert is_ready(pod) and container_state(pod, "main").restart_count == 0

    # adopted processes are still managed: scaling down terminates them gracefully
    scale(devcluster, namespace, "adopt", 0)
    wait_for(lambda: not processes_with_marker(marker), 60, "the adopted processes to stop")
    wait_for(lambda: not pods_of(api, namespace, "app=adopt"), 60, "the pods to be deleted")
    for pod in pods:
        assert (tmp_path / pod.metadata.name).read_text().splitlines()[1:] == ["SIGTERM", "exiting"]


# --- two clusters, and cleanup ---------------------------------------------------------------------------

def loopback_addresses() -> set[str]:
    output = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", "lo"], capture_output=True, text=True).stdout
    return {line.split()[3].split("/")[0] for line in output.splitlines()}


def start_second_cluster(devcluster: DevCluster, directory: Path):
    """Another cluster beside the session's, with networks of its own. Retried: the random
    networks may collide, and a free port picked for a component may be taken before it binds."""
    import shutil

    from devcluster import cluster

    for _ in range(4):
        try:
            second = cluster.up(directory)
        except cluster.ClusterError:
            second = None
        if second is not None and second.state().pod_network != devcluster.pod_network:
            return second
        cluster.down(directory)
        shutil.rmtree(directory)
    raise AssertionError("could not start a second cluster with networks of its own")


def test_two_clusters_side_by_side_and_cleanup_after_down(
        devcluster: DevCluster, namespace: str, tmp_path: Path) -> None:
    """Names in /etc/hosts are machine-wide: the same `svc.ns` in two clusters would clash (the first
    block wins), so the second cluster's Service lives in a namespace of another name."""
    from devcluster import cluster

    second_dir = tmp_path / "second"
    second = start_second_cluster(devcluster, second_dir)
    other_namespace = f"{namespace}-2"
    try:
        other = DevCluster(dir=second.dir, bin_dir=devcluster.bin_dir)
        other.kubectl("create", "namespace", other_namespace)
        wait_for(lambda: core(other).list_namespaced_service_account(other_namespace).items, 60,
                 "the second cluster's default ServiceAccount")
        marker = f"{namespace}-second"
        for target, ns in ((devcluster, namespace), (other, other_namespace)):
            server = python_container("web", HTTP_PROGRAM, env=[
                env_var("POD_IP", **field_ref("status.podIP")),
                env_var("TEST_MARKER", value=marker if target is other else f"{namespace}-first")],
                ports=[{"name": "http", "containerPort": 8080}])
            apply(target, ns, deployment("web", 1, [server], grace=5),
                  {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                   "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}})
        second_pods = wait_for(lambda: [p for p in pods_of(core(other), other_namespace, "app=web") if is_ready(p)],
                               60, "the second cluster's pod")
        first_pods = wait_for(lambda: [p for p in pods_of(core(devcluster), namespace, "app=web") if is_ready(p)],
                              60, "the first cluster's pod")
        assert second_pods[0].status.pod_ip != first_pods[0].status.pod_ip
        second_ip = core(other).read_namespaced_service("web", other_namespace).spec.cluster_ip
        first_ip = core(devcluster).read_namespaced_service("web", namespace).spec.cluster_ip

        def answer(url: str) -> str:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode().split()[0]

        assert wait_for(lambda: answer(f"http://web.{other_namespace}.svc/"), 30, "the second cluster's Service") \
            == second_pods[0].metadata.name
        assert wait_for(lambda: answer(f"http://web.{namespace}.svc/"), 30, "the first cluster's Service") \
            == first_pods[0].metadata.name
        assert second_ip in loopback_addresses()
        assert len(processes_with_marker(marker)) == 1
    finally:
        cluster.down(second_dir)
    hosts = Path("/etc/hosts").read_text()
    assert str(second.dir) not in hosts and f"web.{other_namespace}.svc" not in hosts
    assert f"web.{namespace}.svc" in hosts
    assert second_ip not in loopback_addresses() and first_ip in loopback_addresses()
    assert not processes_with_marker(marker), "down left pod processes of the second cluster behind"
    assert answer(f"http://web.{namespace}.svc/") == first_pods[0].metadata.name


def test_cleanup_kills_recorded_processes_even_without_an_agent(tmp_path: Path) -> None:
    from devcluster.agent import cleanup, procs

    pod_dir = tmp_path / "cluster" / "pods" / "ns_pod"
    marker = f"cleanup-{tmp_path.name}"
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '300']); "
                              "time.sleep(300)"], env=dict(os.environ, TEST_MARKER=marker), start_new_session=True)
    wait_for(lambda: len(processes_with_marker(marker)) == 2, 10, "a process and its child")
    identity = procs.identify(child.pid)
    procs.write_record(pod_dir, procs.ContainerRecord(container="main", pid=child.pid, start_ticks=identity.start_ticks,
                                                      boot_id=identity.boot_id, started_at=time.time(),
                                                      restart_count=0))
    # a record whose pid now belongs to another process must not be acted on
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    procs.write_record(pod_dir, procs.ContainerRecord(container="stale", pid=stranger.pid, start_ticks=1,
                                                      boot_id=identity.boot_id, started_at=0, restart_count=0))
    try:
        cleanup(tmp_path / "cluster")
        child.wait(timeout=10)
        wait_for(lambda: not processes_with_marker(marker), 10, "the whole session to be killed")
        assert stranger.poll() is None, "cleanup killed a process it did not start"
        cleanup(tmp_path / "cluster")  # idempotent
    finally:
        stranger.kill()
        stranger.wait()
