"""One pod's life on this node: a worker coroutine per pod, level-triggered like the kubelet's
syncPod. Each pass looks at the pod (as last seen from the API) and at its processes, takes the
next step (start an init container, start or restart containers, tear everything down), and
publishes the pod status when it changed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from devcluster.agent import addresses, backoff, procs, serviceaccount
from devcluster.agent.containers import ContainerRun, record_exit, stop_watching, watch_exit
from devcluster.agent.context import AgentContext
from devcluster.agent.environment import (
    ContainerConfigError,
    EnvSources,
    PodPlacement,
    container_env,
    expanded_command,
    referenced_objects,
)
from devcluster.agent.kubeapi import ApiError
from devcluster.agent.prober import start_probes
from devcluster.agent.probes import ExecContext, run_handler
from devcluster.agent.status import (
    REASON_CONFIG_ERROR,
    REASON_CONTAINER_CREATING,
    REASON_CONTAINER_STATUS_UNKNOWN,
    REASON_CRASH_LOOP,
    REASON_NOT_RUNNABLE,
    REASON_POD_INITIALIZING,
    PodFacts,
    Running,
    Terminated,
    Waiting,
    already_reported,
    container_id,
    pod_status,
    state_from_api,
)

log = logging.getLogger(__name__)

CONFIG_ERROR_RETRY_SECONDS = 10.0  # the kubelet's pod worker back-off after a failed sync
SYNC_ERROR_RETRY_SECONDS = 10.0
MINIMUM_KILL_GRACE_SECONDS = 2.0  # the kubelet never SIGKILLs sooner than this after SIGTERM
DEFAULT_GRACE_SECONDS = 30.0
STATUS_RETRY_SECONDS = 2.0


class PodWorker:
    def __init__(self, context: AgentContext, pod: dict) -> None:
        self.context = context
        self.pod = pod
        metadata = pod["metadata"]
        self.uid: str = metadata["uid"]
        self.namespace: str = metadata["namespace"]
        self.name: str = metadata["name"]
        self.dir = context.pod_dir(self.namespace, self.name)
        self.hostname = procs.pod_hostname(self.name, (pod.get("spec") or {}).get("hostname"))
        self.api_gone = False
        self.pod_ip: str | None = None
        self.start_time: float | None = None
        self.published: dict | None = None
        self.conditions: list[dict] = []
        self.kubeconfig: Path | None = None
        self.token_refresh_at: float | None = None
        self.initialized_before = False
        self.terminating_since: float | None = None
        self.finished = False
        self.failure: tuple[str, str] | None = None
        self._wake = asyncio.Event()
        self._timers: list[float] = []
        self._background: set[asyncio.Task] = set()
        spec = pod.get("spec") or {}
        self.runs: dict[str, ContainerRun] = {}
        for container in spec.get("initContainers") or ():
            self.runs[container["name"]] = ContainerRun(
                spec=container, init=True, restartable_init=container.get("restartPolicy") == "Always",
                state=Waiting(REASON_POD_INITIALIZING))
        for container in spec.get("containers") or ():
            initial = REASON_POD_INITIALIZING if spec.get("initContainers") else REASON_CONTAINER_CREATING
            self.runs[container["name"]] = ContainerRun(spec=container, state=Waiting(initial))

    # --- inputs ----------------------------------------------------------------------------------

    def update(self, pod: dict) -> None:
        if pod["metadata"]["uid"] == self.uid:
            self.pod = pod
            self.wake()

    def gone(self) -> None:
        self.api_gone = True
        self.wake()

    def wake(self) -> None:
        self._wake.set()

    def _wake_at(self, monotonic_deadline: float) -> None:
        self._timers.append(monotonic_deadline)

    @property
    def spec(self) -> dict:
        return self.pod.get("spec") or {}

    @property
    def restart_policy(self) -> str:
        return self.spec.get("restartPolicy") or "Always"

    @property
    def init_runs(self) -> list[ContainerRun]:
        return [run for run in self.runs.values() if run.init]

    @property
    def main_runs(self) -> list[ContainerRun]:
        return [run for run in self.runs.values() if not run.init]

    def deletion_requested(self) -> bool:
        return self.api_gone or bool(self.pod["metadata"].get("deletionTimestamp"))

    # --- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            self._prepare()
            while not self.finished:
                self._wake.clear()
                try:
                    await self._sync()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("pod %s/%s: sync failed; retrying", self.namespace, self.name)
                    self._wake_at(time.monotonic() + SYNC_ERROR_RETRY_SECONDS)
                if not self.api_gone and not self.finished:
                    await self._publish_status()
                if self.finished:
                    break
                await self._sleep_until_woken()
        finally:
            self._stop_watchers()
            for task in list(self._background):
                task.cancel()

    async def _sleep_until_woken(self) -> None:
        now = time.monotonic()
        self._timers = [deadline for deadline in self._timers if deadline > now]
        timeout = min(self._timers) - now if self._timers else None
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _prepare(self) -> None:
        """Pod directory, pod IP (kept from before an agent restart), adoption of processes."""
        self.dir.mkdir(parents=True, exist_ok=True)
        marker = self.dir / "pod.json"
        previous: dict = {}
        try:
            previous = json.loads(marker.read_text())
        except (OSError, ValueError):
            pass
        if previous.get("uid") != self.uid and any(self.dir.iterdir()):
            self._clear_directory_of_other_pod()
            previous = {}
        status = self.pod.get("status") or {}
        if self.spec.get("hostNetwork"):
            self.pod_ip = self.context.host_ip
        else:
            for candidate in (previous.get("podIP"), status.get("podIP")):
                if candidate and self.context.pool.claim(self.uid, candidate):
                    self.pod_ip = candidate
                    break
            if self.pod_ip is None:
                self.pod_ip = self.context.pool.allocate(self.uid)
            addresses.ensure_local_address(self.context.cluster_dir, self.pod_ip, addresses.POD_ADDRESSES)
        self.start_time = status.get("startTime") and _parse(status["startTime"]) or time.time()
        marker_data = {"uid": self.uid, "namespace": self.namespace, "name": self.name, "podIP": self.pod_ip}
        temporary = marker.with_suffix(".tmp")
        temporary.write_text(json.dumps(marker_data))
        temporary.replace(marker)
        self._resume_from(status, procs.read_records(self.dir))

    def _clear_directory_of_other_pod(self) -> None:
        """A pod of the same name but another UID used this directory before: its processes are
        gone or are killed now, and its files make room for this pod."""
        for record in procs.read_records(self.dir):
            procs.kill_session(record.identity)
        for entry in self.dir.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    def _resume_from(self, status: dict, records: list[procs.ContainerRecord]) -> None:
        """Pick up where an earlier agent left: running processes are adopted, dead ones are
        reported as exited, finished containers keep their reported state."""
        reported = {entry["name"]: entry for key in ("initContainerStatuses", "containerStatuses")
                    for entry in status.get(key) or ()}
        by_name = {record.container: record for record in records}
        for run in self.runs.values():
            entry = reported.get(run.name) or {}
            record = by_name.get(run.name)
            run.restart_count = int(entry.get("restartCount") or 0)
            last = state_from_api(entry.get("lastState"))
            run.last_state = last if isinstance(last, Terminated) else None
            current = state_from_api(entry.get("state"))
            if record is not None:
                run.restart_count = record.restart_count
                run.container_id = entry.get("containerID") or container_id(self.uid, run.name, record.restart_count)
                if record.identity.alive():
                    run.identity = record.identity
                    run.started_at = record.started_at
                    run.state = Running(record.started_at)
                    run.ready = bool(entry.get("ready"))
                    run.started = bool(entry.get("started")) or not run.spec.get("startupProbe")
                    if run.started:
                        run.started_event.set()
                    log.info("pod %s/%s: adopted container %s (pid %d)", self.namespace, self.name, run.name,
                             record.pid)
                    continue
                run.container_id = run.container_id or container_id(self.uid, run.name, record.restart_count)
                record_exit(run, procs.zombie_wait_status(record.identity), record.started_at)
                procs.remove_record(self.dir, run.name)
                continue
            if isinstance(current, (Terminated, Waiting)):
                run.state = current
                run.container_id = current.container_id if isinstance(current, Terminated) else ""
            elif isinstance(current, Running):
                # reported running, but no process of it is known here: it is lost
                run.state = Terminated(137, REASON_CONTAINER_STATUS_UNKNOWN, current.started_at, time.time(),
                                       "The container could not be located when the node agent restarted")
        self.initialized_before = any(c.get("type") == "Initialized" and c.get("status") == "True"
                                      for c in status.get("conditions") or ())
        for run in self.runs.values():
            if run.running:
                self._watch_exit(run)
                self._start_probes(run)

    async def _sync(self) -> None:
        if self.deletion_requested():
            await self._terminate()
            return
        if self._pod_is_done():
            return
        if await self._active_deadline_exceeded():
            return
        if not await self._ensure_credentials():
            return
        if not await self._step_init_containers():
            return
        for run in self.main_runs:
            await self._step_container(run)

    # --- steps ---------------------------------------------------------------------------------------

    def _pod_is_done(self) -> bool:
        """A pod that reached Succeeded/Failed stays so: nothing is started again."""
        phase = (self.published or self.pod.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return not any(run.running for run in self.runs.values())
        return False

    async def _active_deadline_exceeded(self) -> bool:
        """spec.activeDeadlineSeconds: past it, the pod's containers are stopped and the pod fails."""
        deadline = self.spec.get("activeDeadlineSeconds")
        if deadline is None or self.start_time is None:
            return False
        remaining = self.start_time + float(deadline) - time.time()
        if remaining > 0:
            self._wake_at(time.monotonic() + remaining)
            return False
        if self.failure is None:
            self.failure = ("DeadlineExceeded", "Pod was active on the node longer than the specified deadline")
            self.context.events.record(self.pod, "Normal", "DeadlineExceeded", self.failure[1])
            log.info("pod %s/%s: active deadline exceeded", self.namespace, self.name)
        running = [run for run in self.runs.values() if run.running]
        await asyncio.gather(*(self._kill_container(run, self._spec_grace(), "DeadlineExceeded") for run in running))
        return True

    async def _ensure_credentials(self) -> bool:
        needed, lifetime = serviceaccount.wants_token(self.pod)
        if not needed:
            return True
        if self.kubeconfig is not None and self.token_refresh_at is not None and time.time() < self.token_refresh_at:
            return True
        account = serviceaccount.service_account_name(self.pod)
        try:
            answer = await self.context.client.post(
                f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{account}/token",
                serviceaccount.token_request(self.pod, lifetime))
        except Exception as failure:
            if self.kubeconfig is not None:
                log.warning("pod %s/%s: token refresh failed (%s); retrying", self.namespace, self.name, failure)
                self._wake_at(time.monotonic() + 10)
                return True
            message = f'failed to fetch token: serviceaccounts "{account}" token request failed: {failure}'
            for run in self.runs.values():
                if isinstance(run.state, Waiting) and run.last_state is None:
                    run.state = Waiting(REASON_CONTAINER_CREATING)
            self.context.events.record(self.pod, "Warning", "FailedMount", message)
            self._wake_at(time.monotonic() + CONFIG_ERROR_RETRY_SECONDS)
            return False
        issued = time.time()
        expires = serviceaccount.parse_timestamp(answer["status"]["expirationTimestamp"])
        self.kubeconfig = await asyncio.to_thread(
            serviceaccount.write_credentials, self.dir / "serviceaccount", server=self.context.kubeconfig.server,
            ca_data=self.context.kubeconfig.ca_data, namespace=self.namespace, service_account=account,
            token=answer["status"]["token"])
        self.token_refresh_at = serviceaccount.refresh_at(issued, expires)
        self._wake_at(time.monotonic() + (self.token_refresh_at - issued))
        return True

    async def _step_init_containers(self) -> bool:
        """Run init containers in order; True once the pod is initialized. A sidecar (an init
        container with restartPolicy Always) counts once started and keeps being restarted."""
        for run in self.init_runs:
            if run.restartable_init:
                await self._step_container(run, policy="Always")
                if (run.running and run.started) or self.initialized_before:
                    continue
                return False
            state = run.state
            if isinstance(state, Terminated) and state.exit_code == 0:
                continue
            if run.running:
                return False
            if isinstance(state, Terminated) and self.restart_policy == "Never":
                return False  # the pod has failed
            await self._step_container(run, policy="OnFailure")
            return False
        self.initialized_before = True
        return True

    async def _step_container(self, run: ContainerRun, policy: str | None = None) -> None:
        policy = policy or self.restart_policy
        now = time.monotonic()
        if run.running:
            return
        if run.retry_at is not None and now < run.retry_at:
            return
        state = run.state
        finished = state if isinstance(state, Terminated) else run.last_state
        if isinstance(state, Terminated):
            restart = run.force_restart and policy != "Never" or policy == "Always" or \
                (policy == "OnFailure" and state.exit_code != 0)
            if not restart:
                return
        elif isinstance(state, Waiting) and state.reason == REASON_NOT_RUNNABLE:
            return
        if finished is not None and (isinstance(state, Terminated) or state.reason == REASON_CRASH_LOOP):
            delay = backoff.restart_delay(run.backoff, finished.finished_at, time.time())
            if delay > 0:
                if run.backoff_reported_for != finished.finished_at:
                    run.backoff_reported_for = finished.finished_at
                    self.context.events.record(self.pod, "Warning", "BackOff",
                                               "Back-off restarting failed container "
                                               f"{run.name} in pod {self.name}_{self.namespace}({self.uid})",
                                               run.name, run.init)
                run.last_state = finished
                run.state = Waiting(REASON_CRASH_LOOP, backoff.backoff_message(
                    run.backoff.seconds if run.backoff else backoff.INITIAL_BACKOFF_SECONDS,
                    run.name, self.name, self.namespace, self.uid))
                self._wake_at(now + delay)
                return
        await self._start_container(run, finished)

    async def _start_container(self, run: ContainerRun, finished: Terminated | None) -> None:
        run.retry_at = None
        command = run.spec.get("command")
        if not command:
            if not (isinstance(run.state, Waiting) and run.state.reason == REASON_NOT_RUNNABLE):
                message = (f"container {run.name} has no command: the devcluster node agent ignores images "
                           "(image {image!r}) and runs only a container's command and args".format(
                               image=run.spec.get("image", "")))
                run.state = Waiting(REASON_NOT_RUNNABLE, message)
                self.context.events.record(self.pod, "Warning", "Failed", f"Error: {message}", run.name, run.init)
            return
        try:
            env = await self._environment(run)
        except ContainerConfigError as failure:
            message = str(failure)
            if not (isinstance(run.state, Waiting) and run.state.reason == REASON_CONFIG_ERROR
                    and run.state.message == message):
                self.context.events.record(self.pod, "Warning", "Failed", f"Error: {message}", run.name, run.init)
            if finished is not None:
                run.last_state = finished
            run.state = Waiting(REASON_CONFIG_ERROR, message)
            run.retry_at = time.monotonic() + CONFIG_ERROR_RETRY_SECONDS
            self._wake_at(run.retry_at)
            return
        argv = expanded_command(run.spec, env)
        restarting = finished is not None
        restart_count = run.restart_count + (1 if restarting else 0)
        now = time.time()
        if restarting:
            run.backoff = backoff.after_restart(run.backoff, finished.finished_at, now)
            run.last_state = finished
        run.restart_count = restart_count
        run.container_id = container_id(self.uid, run.name, restart_count)
        run.force_restart = False
        run.env = env
        executable = procs.find_executable(argv[0], env.get("PATH", ""), self.dir)
        if executable is None:
            message = (f'failed to create containerd task: failed to create shim task: OCI runtime create failed: '
                       f'exec: "{argv[0]}": executable file not found in $PATH')
            run.state = Terminated(128, "StartError", now, now, message, container_id=run.container_id)
            self.context.events.record(self.pod, "Warning", "Failed", f"Error: {message}", run.name, run.init)
            self.wake()
            return
        self.context.events.record(self.pod, "Normal", "Pulled",
                                   f'Container image "{run.spec.get("image", "")}" already present on machine',
                                   run.name, run.init)
        try:
            process = procs.start_process(argv, env, self.dir, self._log_path(run), self.hostname)
        except OSError as failure:
            message = f"failed to start container {run.name}: {failure}"
            run.state = Terminated(128, "StartError", now, now, message, container_id=run.container_id)
            self.context.events.record(self.pod, "Warning", "Failed", f"Error: {message}", run.name, run.init)
            self.wake()
            return
        identity = procs.identify(process.pid) or procs.ProcessIdentity(process.pid, -1, procs.BOOT_ID)
        procs.write_record(self.dir, procs.ContainerRecord(
            container=run.name, pid=process.pid, start_ticks=identity.start_ticks, boot_id=identity.boot_id,
            started_at=now, restart_count=restart_count, init=run.init))
        run.process = process
        run.identity = identity
        run.started_at = now
        run.state = Running(now)
        run.ready = False
        run.started = not run.spec.get("startupProbe")
        run.started_event = asyncio.Event()
        run.exited = asyncio.Event()
        if run.started:
            run.started_event.set()
        self.context.events.record(self.pod, "Normal", "Created", f"Created container: {run.name}", run.name, run.init)
        self.context.events.record(self.pod, "Normal", "Started", f"Started container {run.name}", run.name, run.init)
        log.info("pod %s/%s: started container %s (pid %d, restart %d)", self.namespace, self.name, run.name,
                 process.pid, restart_count)
        self._watch_exit(run)
        post_start = (run.spec.get("lifecycle") or {}).get("postStart")
        if post_start:
            outcome = await run_handler(post_start, self.exec_context(run), None)
            if not outcome.success and run.running:
                self.context.events.record(self.pod, "Warning", "FailedPostStartHook",
                                           f"PostStartHook failed: {outcome.message}", run.name, run.init)
                await self._kill_container(run, self._grace_seconds(), reason="FailedPostStartHook")
                run.force_restart = True
                return
        self._start_probes(run)

    def _log_path(self, run: ContainerRun) -> Path:
        return self.dir / "logs" / f"{run.name}.log"

    async def _environment(self, run: ContainerRun) -> dict[str, str]:
        secrets, config_maps = referenced_objects(run.spec)
        sources = EnvSources(
            secrets={name: await self._fetch_data("secrets", name) for name in sorted(secrets)},
            config_maps={name: await self._fetch_data("configmaps", name) for name in sorted(config_maps)},
        )
        placement = PodPlacement(pod_ip=self.pod_ip or "", host_ip=self.context.host_ip,
                                 node_allocatable=self.context.allocatable)
        defined = container_env(self.pod, run.spec, placement, sources, self.context.services_in(self.namespace))
        environment = self.context.image_environment(self.hostname, self.dir)
        if self.kubeconfig is not None:
            environment["KUBECONFIG"] = str(self.kubeconfig)
        environment.update(defined)
        return environment

    async def _fetch_data(self, kind: str, name: str) -> dict[str, str] | None:
        try:
            found = await self.context.client.get(f"/api/v1/namespaces/{self.namespace}/{kind}/{name}")
        except ApiError as failure:
            if failure.status == 404:
                return None
            raise ContainerConfigError(f"failed to read {kind[:-1]} {self.namespace}/{name}: {failure}") from failure
        except Exception as failure:
            raise ContainerConfigError(f"failed to read {kind[:-1]} {self.namespace}/{name}: {failure}") from failure
        data = found.get("data") or {}
        if kind == "secrets":
            return {key: base64.b64decode(value).decode("utf-8", "surrogateescape") for key, value in data.items()}
        return dict(data)

    # --- processes -----------------------------------------------------------------------------------

    def _watch_exit(self, run: ContainerRun) -> None:
        watch_exit(run, self._on_process_exit)

    def _on_process_exit(self, run: ContainerRun, identity: procs.ProcessIdentity, wait_status: int | None) -> None:
        state = record_exit(run, wait_status, run.started_at)
        log.info("pod %s/%s: container %s exited with %d", self.namespace, self.name, run.name, state.exit_code)
        procs.remove_record(self.dir, run.name)
        # like the end of a container's PID namespace: the rest of its processes go with it
        procs.kill_session(identity)
        self.wake()

    def _stop_watchers(self) -> None:
        for run in self.runs.values():
            stop_watching(run)
            run.stop_probes()

    def _in_background(self, coroutine) -> asyncio.Task:
        """A task of this worker, referenced until done (the loop only keeps weak references)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # --- probes (the ProbeHost side) -------------------------------------------------------------------

    def _start_probes(self, run: ContainerRun) -> None:
        if not run.env:
            run.probe_tasks.append(asyncio.get_running_loop().create_task(self._restore_env(run)))
        start_probes(run, self)

    async def _restore_env(self, run: ContainerRun) -> None:
        """Exec probes of an adopted container run in its environment, resolved once more."""
        try:
            run.env = await self._environment(run)
        except Exception:
            run.env = self.context.image_environment(self.hostname, self.dir)

    def exec_context(self, run: ContainerRun) -> ExecContext:
        return ExecContext(env=run.env or self.context.image_environment(self.hostname, self.dir),
                           cwd=str(self.dir), hostname=self.hostname, pod_ip=self.pod_ip or "",
                           container_ports=run.spec.get("ports") or (), source_ip=self.context.host_ip)

    def probe_failed(self, run: ContainerRun, kind: str, message: str) -> None:
        self.context.events.record(self.pod, "Warning", "Unhealthy", f"{kind} probe failed: {message}",
                                   run.name, run.init)

    def status_changed(self) -> None:
        self.wake()

    def terminating(self) -> bool:
        return self.terminating_since is not None

    def restart_unhealthy(self, run: ContainerRun, kind: str, grace: float | None) -> None:
        self.context.events.record(self.pod, "Normal", "Killing",
                                   f"Container {run.name} failed {kind.lower()} probe, will be restarted",
                                   run.name, run.init)
        run.force_restart = True
        self._in_background(self._kill_container(run, self._spec_grace() if grace is None else grace, reason=kind))

    # --- termination ---------------------------------------------------------------------------------

    def _spec_grace(self) -> float:
        value = self.spec.get("terminationGracePeriodSeconds")
        return float(DEFAULT_GRACE_SECONDS if value is None else value)

    def _grace_seconds(self) -> float:
        value = self.pod["metadata"].get("deletionGracePeriodSeconds")
        return float(value) if value is not None else self._spec_grace()

    async def _kill_container(self, run: ContainerRun, grace: float, reason: str) -> None:
        """preStop hook, SIGTERM to the main process, SIGKILL to the whole container once the grace
        period (counted from now, preStop included) is over."""
        identity = run.identity
        if identity is None or not run.running:
            return
        started = time.monotonic()
        deadline = started + grace
        pre_stop = (run.spec.get("lifecycle") or {}).get("preStop")
        remaining = max(0.0, self._current_deadline(deadline) - time.monotonic())
        if pre_stop and remaining > 0:  # as the kubelet, no preStop hook without a grace period
            try:
                outcome = await asyncio.wait_for(run_handler(pre_stop, self.exec_context(run), remaining), remaining)
                if not outcome.success:
                    self.context.events.record(self.pod, "Warning", "FailedPreStopHook",
                                               f"PreStopHook failed: {outcome.message.strip()}", run.name, run.init)
            except asyncio.TimeoutError:
                self.context.events.record(self.pod, "Warning", "FailedPreStopHook",
                                           f"PreStopHook failed: timed out after {remaining:.0f}s", run.name, run.init)
        if run.identity != identity:
            return
        if reason in ("Deletion", "DeadlineExceeded"):
            self.context.events.record(self.pod, "Normal", "Killing", f"Stopping container {run.name}",
                                       run.name, run.init)
        procs.signal_main_process(identity, signal.SIGTERM)
        kill_floor = time.monotonic() + MINIMUM_KILL_GRACE_SECONDS
        while run.identity == identity:
            now = time.monotonic()
            limit = max(self._current_deadline(deadline) if reason == "Deletion" else deadline, kill_floor)
            if now >= limit:
                log.info("pod %s/%s: container %s did not stop within its grace period: SIGKILL",
                         self.namespace, self.name, run.name)
                procs.kill_session(identity)
                break
            try:
                await asyncio.wait_for(run.exited.wait(), min(limit - now, 0.5))
            except asyncio.TimeoutError:
                pass
        await run.exited.wait()

    async def _stop_all_containers(self) -> None:
        """Regular containers in parallel, then sidecars in reverse order (the kubelet's order)."""
        grace = self._grace_seconds()
        regular = [run for run in self.runs.values() if run.running and not run.restartable_init]
        await asyncio.gather(*(self._kill_container(run, grace, "Deletion") for run in regular))
        sidecars = [run for run in reversed(self.init_runs) if run.running and run.restartable_init]
        for run in sidecars:
            remaining = max(0.0, self.terminating_since + grace - time.monotonic())
            await self._kill_container(run, remaining, "Deletion")

    def _current_deadline(self, fallback: float) -> float:
        """The termination deadline: a later delete with a shorter grace period brings it forward."""
        if self.terminating_since is None:
            return fallback
        grace = self._grace_seconds()
        if self.api_gone:
            grace = min(grace, 0.0)
        return min(fallback, self.terminating_since + grace)

    async def _terminate(self) -> None:
        if self.terminating_since is None:
            self.terminating_since = time.monotonic()
            log.info("pod %s/%s: terminating (grace %ss)", self.namespace, self.name, self._grace_seconds())
        stopping = asyncio.get_running_loop().create_task(self._stop_all_containers())
        while not stopping.done():
            # container exits during the grace period are reported as they happen
            self._wake.clear()
            woken = asyncio.ensure_future(self._wake.wait())
            await asyncio.wait([stopping, woken], return_when=asyncio.FIRST_COMPLETED)
            woken.cancel()
            if not self.api_gone and not stopping.done():
                await self._publish_status()
        await stopping
        self._stop_watchers()
        if not self.api_gone:
            await self._publish_status(terminal=True)
            await self._delete_from_api()
        self._forget()
        self.finished = True

    async def _delete_from_api(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}"
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": self.uid}}
        for attempt in range(5):
            try:
                await self.context.client.delete(path, body)
                return
            except ApiError as failure:
                if failure.status in (404, 409):
                    return
                log.warning("pod %s/%s: delete failed: %s", self.namespace, self.name, failure)
            except Exception as failure:
                log.warning("pod %s/%s: delete failed: %s", self.namespace, self.name, failure)
            await asyncio.sleep(1 + attempt)

    def _forget(self) -> None:
        if self.pod_ip and not self.spec.get("hostNetwork"):
            addresses.remove_local_address(self.context.cluster_dir, self.pod_ip, addresses.POD_ADDRESSES)
        self.context.pool.release(self.uid)
        shutil.rmtree(procs.run_dir(self.dir), ignore_errors=True)
        (self.dir / "pod.json").unlink(missing_ok=True)

    # --- status --------------------------------------------------------------------------------------

    def build_status(self, terminal: bool = False) -> dict[str, Any]:
        facts = PodFacts(
            restart_policy=self.restart_policy, host_ip=self.context.host_ip, pod_ip=self.pod_ip or "",
            start_time=self.start_time or time.time(), generation=self.pod["metadata"].get("generation"),
            readiness_gates=[gate.get("conditionType") for gate in self.spec.get("readinessGates") or ()],
            initialized_before=self.initialized_before, failure=self.failure)
        status = pod_status(facts, [run.view() for run in self.init_runs], [run.view() for run in self.main_runs],
                            terminal=terminal, api_status=self.pod.get("status") or {},
                            previous_conditions=self.conditions, now=time.time())
        self.conditions = status["conditions"]
        return status

    async def _publish_status(self, terminal: bool = False) -> None:
        status = self.build_status(terminal)
        if status == self.published:
            return
        if self.published is None and already_reported(status, self.pod.get("status") or {}):
            self.published = status  # e.g. a pod adopted after an agent restart
            return
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
        try:
            updated = await self.context.client.patch(path, {"metadata": {"uid": self.uid}, "status": status})
        except ApiError as failure:
            if failure.status in (404, 409):
                return  # the pod is gone, or another pod of that name replaced it
            log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, failure)
            self._wake_at(time.monotonic() + STATUS_RETRY_SECONDS)
            return
        except Exception as failure:
            log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, failure)
            self._wake_at(time.monotonic() + STATUS_RETRY_SECONDS)
            return
        self.published = status
        if isinstance(updated, dict) and updated.get("metadata", {}).get("uid") == self.uid:
            self.pod = updated


def _parse(text: str) -> float:
    return serviceaccount.parse_timestamp(text)
