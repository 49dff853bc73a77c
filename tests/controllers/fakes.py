"""Fakes of the operator's I/O ports (celery_operator/ports.py), faithful where the controllers
depend on it: server-side apply replaces what one field manager owns (so a field it stops sending
is gone), the scale subresource moves `replicas` to the scaler's manager, status parts of two
managers merge like the CRDs' map lists, and every write is recorded so a test can count them."""

from __future__ import annotations

import copy
import datetime
import itertools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from celery_operator.beat.state import BeatState, StateLocation
from celery_operator.broker.depth import QueueDepth
from celery_operator.broker.heartbeats import QueueActivity, WorkerState
from celery_operator.broker.probe import ProbeResult, RedisInstance, RedisMemory
from celery_operator.broker.urls import BrokerUnavailable
from celery_operator.children import controller_uid
from celery_operator.kube import KubeError
from celery_operator.naming import API_VERSION, TASKQUEUE_KIND
from celery_operator.runtime import Runtime
from celery_operator.settings import Settings

Manifest = dict[str, Any]
Key = tuple[str, str, str]  # (kind, namespace, name)

SCALER = Settings().scaler_field_manager
_UIDS = itertools.count(1)


def _merge_status(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What the API server shows when several managers applied their parts of a status."""
    merged: dict[str, Any] = {}
    conditions: dict[str, dict[str, Any]] = {}
    queues: dict[str, dict[str, Any]] = {}
    for part in parts:
        for key, value in part.items():
            if key == "conditions":
                conditions.update({c["type"]: copy.deepcopy(c) for c in value})
            elif key == "queues":
                for entry in value:
                    queues.setdefault(entry["name"], {}).update(copy.deepcopy(entry))
            else:
                merged[key] = copy.deepcopy(value)
    if conditions:
        merged["conditions"] = list(conditions.values())
    if queues:
        merged["queues"] = list(queues.values())
    return merged


@dataclass
class StoredObject:
    body: Manifest
    status_parts: dict[str, dict[str, Any]] = field(default_factory=dict)  # field manager -> its part


class FakeKube:
    """An API server in memory. `writes` lists every write: (verb, kind, name)."""

    def __init__(self) -> None:
        self.objects: dict[Key, StoredObject] = {}
        self.pods: list[Manifest] = []
        self.events: list[tuple[str, str, str, str]] = []  # (involved name, type, reason, message)
        self.object_events: list[Manifest] = []  # Events other controllers recorded (the binder's, ...)
        self.writes: list[tuple[str, str, str]] = []
        self.terminating: set[str] = set()  # namespaces being deleted: creates there are refused

    # --- test helpers ---------------------------------------------------------------------------

    def create_taskqueue(self, name: str, spec: Mapping[str, Any], namespace: str = "ns") -> Manifest:
        body = {"apiVersion": API_VERSION, "kind": TASKQUEUE_KIND,
                "metadata": {"name": name, "namespace": namespace, "uid": f"tq-{next(_UIDS)}", "generation": 1},
                "spec": copy.deepcopy(dict(spec))}
        self.objects[(TASKQUEUE_KIND, namespace, name)] = StoredObject(body)
        return self.body(TASKQUEUE_KIND, name, namespace)

    def create_custom(self, body: Mapping[str, Any]) -> Manifest:
        stored = copy.deepcopy(dict(body))
        stored["metadata"].setdefault("uid", f"uid-{next(_UIDS)}")
        stored["metadata"].setdefault("generation", 1)
        metadata = stored["metadata"]
        self.objects[(stored["kind"], metadata["namespace"], metadata["name"])] = StoredObject(stored)
        return self.body(stored["kind"], metadata["name"], metadata["namespace"])

    def edit_spec(self, kind: str, name: str, spec: Mapping[str, Any], namespace: str = "ns") -> Manifest:
        stored = self.objects[(kind, namespace, name)]
        stored.body["spec"] = copy.deepcopy(dict(spec))
        stored.body["metadata"]["generation"] += 1
        return self.body(kind, name, namespace)

    def body(self, kind: str, name: str, namespace: str = "ns") -> Manifest:
        """The object as a watch delivers it, status included."""
        stored = self.objects[(kind, namespace, name)]
        body = copy.deepcopy(stored.body)
        status = _merge_status(list(stored.status_parts.values()))
        if status:
            body["status"] = status
        return body

    def children_of(self, owner_uid: str) -> list[Manifest]:
        """What the handlers' indexes hold: every object whose controller is `owner_uid`."""
        return [self.body(kind, name, namespace) for (kind, namespace, name), stored in self.objects.items()
                if controller_uid(stored.body) == owner_uid]

    def child(self, kind: str, name: str, namespace: str = "ns") -> Manifest | None:
        stored = self.objects.get((kind, namespace, name))
        return copy.deepcopy(stored.body) if stored else None

    def roll_out(self, name: str, namespace: str = "ns", ready: bool = True,
                 at: datetime.datetime | None = None) -> None:
        """The Deployment controller's report: the current template rolled out, every replica available
        (its Available condition True since `at`, default now)."""
        body = self.objects[("Deployment", namespace, name)].body
        replicas = int(body["spec"].get("replicas", 1))
        available = replicas if ready else 0
        since = (at or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
        body["status"] = {"observedGeneration": body["metadata"]["generation"], "replicas": replicas,
                          "updatedReplicas": replicas, "readyReplicas": available, "availableReplicas": available,
                          "conditions": [{"type": "Available", "status": "True" if ready else "False",
                                          "lastTransitionTime": since}]}

    def bind_claim(self, name: str, namespace: str = "ns") -> None:
        self.objects[("PersistentVolumeClaim", namespace, name)].body["status"] = {"phase": "Bound"}

    def record_event(self, kind: str, name: str, event_type: str, reason: str, message: str,
                     namespace: str = "ns") -> None:
        """An Event another controller posts about our child `kind`/`name` (the volume binder, ...)."""
        involved = self.objects[(kind, namespace, name)].body["metadata"]
        self.object_events.append({"type": event_type, "reason": reason, "message": message,
                                   "lastTimestamp": f"2026-12-07T10:00:{len(self.object_events):02d}Z",
                                   "involvedObject": {"kind": kind, "name": name, "namespace": namespace,
                                                      "uid": involved["uid"]}})

    def roll_out_all(self, namespace: str = "ns") -> None:
        for kind, space, name in list(self.objects):
            if kind == "Deployment" and space == namespace:
                self.roll_out(name, namespace)

    def add_foreign(self, manifest: Mapping[str, Any]) -> None:
        body = copy.deepcopy(dict(manifest))
        metadata = body["metadata"]
        metadata.setdefault("uid", f"foreign-{next(_UIDS)}")
        self.objects[(body["kind"], metadata["namespace"], metadata["name"])] = StoredObject(body)

    def writes_since(self, mark: int) -> list[tuple[str, str, str]]:
        return self.writes[mark:]

    # --- the port ---------------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None:
        stored = self.objects.get((kind, namespace, name))
        return self.body(kind, name, namespace) if stored else None

    def list_pods(self, namespace: str, label_selector: str) -> list[Manifest]:
        wanted = dict(item.split("=", 1) for item in label_selector.split(","))
        return [copy.deepcopy(pod) for pod in self.pods if pod["metadata"].get("namespace", namespace) == namespace
                and wanted.items() <= (pod["metadata"].get("labels") or {}).items()]

    def list_events(self, namespace: str, kind: str, name: str) -> list[Manifest]:
        return [copy.deepcopy(event) for event in self.object_events
                if (event["involvedObject"]["kind"], event["involvedObject"]["namespace"],
                    event["involvedObject"]["name"]) == (kind, namespace, name)]

    def apply(self, manifest: Mapping[str, Any], field_manager: str) -> Manifest:
        metadata = manifest["metadata"]
        key = (manifest["kind"], metadata["namespace"], metadata["name"])
        self.writes.append(("apply", manifest["kind"], metadata["name"]))
        previous = self.objects.get(key)
        if previous is None and metadata["namespace"] in self.terminating:
            raise KubeError(403, "Forbidden", f"unable to create new content in namespace {metadata['namespace']} "
                            "because it is being terminated", causes=("NamespaceTerminating",))
        body = copy.deepcopy(dict(manifest))
        if previous is None:
            body["metadata"].update(uid=f"child-{next(_UIDS)}", generation=1, managedFields=[
                {"manager": field_manager, "operation": "Apply", "fieldsV1": {}}])
        else:
            old = previous.body
            body["metadata"].update(uid=old["metadata"]["uid"], managedFields=old["metadata"].get("managedFields", []),
                                    generation=old["metadata"].get("generation", 1))
            if self._scaler_owns_replicas(old) and "replicas" not in body.get("spec", {}):
                body["spec"]["replicas"] = old["spec"]["replicas"]
            if body.get("spec") != old.get("spec"):
                body["metadata"]["generation"] += 1
            if "status" in old:
                body["status"] = old["status"]
        self.objects[key] = StoredObject(body, previous.status_parts if previous else {})
        return copy.deepcopy(body)

    @staticmethod
    def _scaler_owns_replicas(body: Mapping[str, Any]) -> bool:
        return any(entry.get("manager") == SCALER for entry in body["metadata"].get("managedFields") or [])

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None) -> bool:
        if kind == "Pod":
            found = [pod for pod in self.pods if pod["metadata"]["name"] == name]
            if not found:
                return False
            self.writes.append(("delete", kind, name))
            self.pods.remove(found[0])
            return True
        stored = self.objects.get((kind, namespace, name))
        if stored is None or (uid and stored.body["metadata"].get("uid") != uid):
            return False
        self.writes.append(("delete", kind, name))
        del self.objects[(kind, namespace, name)]
        return True

    def scale(self, namespace: str, deployment: str, replicas: int, field_manager: str) -> Manifest:
        stored = self.objects.get(("Deployment", namespace, deployment))
        if stored is None:
            raise KubeError(404, "NotFound", f"deployments.apps {deployment!r} not found")
        self.writes.append(("scale", "Deployment", deployment))
        body = stored.body
        if body["spec"].get("replicas") != replicas:
            body["metadata"]["generation"] += 1
        body["spec"]["replicas"] = replicas
        managed = [entry for entry in body["metadata"].get("managedFields") or [] if entry["manager"] != field_manager]
        body["metadata"]["managedFields"] = [*managed, {"manager": field_manager, "operation": "Apply",
                                                        "fieldsV1": {"f:spec": {"f:replicas": {}}}}]
        return copy.deepcopy(body)

    def set_pod_condition(self, namespace: str, name: str, condition: Mapping[str, Any]) -> Manifest:
        for pod in self.pods:
            if pod["metadata"]["name"] == name:
                self.writes.append(("condition", "Pod", name))
                conditions = pod.setdefault("status", {}).setdefault("conditions", [])
                conditions[:] = [c for c in conditions if c["type"] != condition["type"]] + [dict(condition)]
                return copy.deepcopy(pod)
        raise KubeError(404, "NotFound", f"pods {name!r} not found")

    def annotate(self, api_version: str, kind: str, namespace: str, name: str,
                 annotations: Mapping[str, str | None]) -> Manifest:
        self.writes.append(("annotate", kind, name))
        for pod in self.pods:
            if pod["metadata"]["name"] == name:
                current = pod["metadata"].setdefault("annotations", {})
                for key, value in annotations.items():
                    if value is None:
                        current.pop(key, None)
                    else:
                        current[key] = value
                return copy.deepcopy(pod)
        raise KubeError(404, "NotFound", f"pods {name!r} not found")

    def apply_status(self, body: Mapping[str, Any], status: Mapping[str, Any], field_manager: str) -> Manifest:
        metadata = body["metadata"]
        key = (body["kind"], metadata["namespace"], metadata["name"])
        self.writes.append(("status", body["kind"], metadata["name"]))
        self.objects[key].status_parts[field_manager] = copy.deepcopy(dict(status))
        return self.body(body["kind"], metadata["name"], metadata["namespace"])

    def post_event(self, involved: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
        self.events.append((involved["metadata"]["name"], event_type, reason, message))

    def close(self) -> None:
        pass


class FakeSession:
    """One broker as the scaler reads it; set `depths`, `activities`, `busy` and `unavailable` at will."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.depths: dict[str, QueueDepth] = {}
        self.activities: dict[str, QueueActivity] = {}
        self.busy: set[str] = set()  # worker hostnames that say they are busy when asked
        self.heartbeats: dict[str, list[WorkerState]] = {}  # queue -> its workers' latest heartbeats
        self.unavailable: str | None = None
        self.heartbeats_unavailable: str | None = None  # the depths read, the workers' heartbeats not (yet)
        self.watched: dict[str, dict[str, int]] = {}  # user -> queue -> the growth that wakes it

    def _check(self) -> None:
        if self.unavailable is not None:
            raise BrokerUnavailable(self.url, "cannot read queue depth", self.unavailable)

    def _check_heartbeats(self) -> None:
        self._check()
        if self.heartbeats_unavailable is not None:
            raise BrokerUnavailable(self.url, "cannot read worker heartbeats", self.heartbeats_unavailable)

    def read_depths(self, queues: Sequence[str]) -> dict[str, QueueDepth]:
        self._check()
        return {queue: self.depths.get(queue, QueueDepth(0, 0)) for queue in queues}

    def activity(self, queue: str, pods: Collection[str]) -> QueueActivity:
        self._check_heartbeats()
        return self.activities.get(queue, QueueActivity(in_flight=0, busy_pods=frozenset(), workers=len(pods)))

    def workers(self, queue: str, pods: Collection[str]) -> list[WorkerState]:
        self._check_heartbeats()
        return [state for state in self.heartbeats.get(queue, []) if state.pod in pods]

    def busy_workers(self, worker_names: Collection[str], timeout: float) -> set[str]:
        self._check()
        return {name for name in worker_names if name in self.busy}

    def watch_growth(self, user: str, thresholds: Mapping[str, int]) -> None:
        self.watched[user] = dict(thresholds)


class FakeBrokers:
    def __init__(self) -> None:
        self.sessions: dict[str, FakeSession] = {}
        self.unreachable: dict[str, str] = {}  # url -> why the probe fails
        self.memory: dict[str, RedisMemory] = {}  # url -> what INFO memory says
        self.instances: dict[str, RedisInstance] = {}  # url -> which run of redis-server answers
        self.messages: dict[str, int] = {}  # url -> what count_messages finds
        self.released: list[str] = []

    def probe(self, url: str) -> ProbeResult:
        if url in self.unreachable:
            return ProbeResult(self.unreachable[url])
        return ProbeResult(None, self.memory.get(url), self.instances.get(url))

    def restart(self, url: str, *, append_only: bool, uptime_seconds: int = 3) -> None:
        """redis-server at `url` starts again: a new run_id."""
        self.instances[url] = RedisInstance(f"run-{next(_UIDS)}", uptime_seconds, append_only)

    def count_messages(self, url: str, queues: Sequence[str]) -> int:
        if url in self.unreachable:
            raise BrokerUnavailable(url, "cannot read queue depth", self.unreachable[url])
        return self.messages.get(url, 0)

    def session(self, user: str, url: str) -> FakeSession:
        return self.sessions.setdefault(url, FakeSession(url))

    def release(self, user: str) -> None:
        self.released.append(user)

    def close(self) -> None:
        pass


@dataclass
class FakeState:
    jobs: dict[str, str] = field(default_factory=dict)
    fired: dict[str, str] = field(default_factory=dict)
    heartbeat: dict[str, Any] | None = None


class FakeBeatState:
    """The beats' Redis state in memory, per location; `writes` counts every write."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], FakeState] = {}
        self.unavailable: str | None = None
        self.writes = 0

    def of(self, location: StateLocation) -> FakeState:
        return self.states.setdefault((location.url, location.prefix), FakeState())

    def _check(self, location: StateLocation) -> None:
        if self.unavailable is not None:
            raise BrokerUnavailable(location.url, "cannot read the beat's schedule state", self.unavailable)

    def read(self, location: StateLocation, job: str | None = None) -> BeatState:
        self._check(location)
        state = self.of(location)
        jobs, fired = dict(state.jobs), dict(state.fired)
        if job is not None:
            jobs = {job: jobs[job]} if job in jobs else {}
            fired = {job: fired[job]} if job in fired else {}
        return BeatState(jobs=jobs, fired=fired, heartbeat=copy.deepcopy(state.heartbeat))

    def write_jobs(self, location: StateLocation, upserts: Mapping[str, tuple[str | None, str]],
                   removals: Mapping[str, str | None]) -> list[str]:
        self._check(location)
        state, skipped = self.of(location), []
        for name, (expected, new) in upserts.items():
            if state.jobs.get(name) != expected:
                skipped.append(name)
                continue
            state.jobs[name] = new
            self.writes += 1
        for name, expected in removals.items():
            if state.jobs.get(name) != expected:
                skipped.append(name)
                continue
            state.jobs.pop(name, None)
            state.fired.pop(name, None)
            self.writes += 1
        return skipped

    def remove_job(self, location: StateLocation, job: str) -> bool:
        self._check(location)
        state = self.of(location)
        state.fired.pop(job, None)
        if state.jobs.pop(job, None) is None:
            return False
        self.writes += 1
        return True

    def delete(self, location: StateLocation) -> None:
        self._check(location)
        self.states.pop((location.url, location.prefix), None)
        self.writes += 1

    def close(self) -> None:
        pass


def fake_runtime(**settings: Any) -> Runtime:
    return Runtime(settings=Settings(**settings), kube=FakeKube(), brokers=FakeBrokers(), beat_state=FakeBeatState())
