"""The I/O ports the controllers use, as the Runtime holds them: Kubernetes, the brokers, the
beats' state; and the leader election's Lease. The operator plugs in kube.Kube, broker.registry.BrokerRegistry and
beat.state.BeatStateStore; the controller tests plug in fakes (tests/controllers/fakes.py)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol

from .beat.state import BeatState, StateLocation
from .broker.depth import QueueDepth
from .broker.heartbeats import QueueActivity, WorkerState
from .broker.probe import ProbeResult

Manifest = dict[str, Any]


class KubePort(Protocol):
    """Every call raises kube.KubeError when the API server refuses or does not answer."""

    def get(self, api_version: str, kind: str, namespace: str, name: str) -> Manifest | None: ...

    def list_pods(self, namespace: str, label_selector: str) -> list[Manifest]: ...

    def list_events(self, namespace: str, kind: str, name: str) -> list[Manifest]: ...

    def apply(self, manifest: Mapping[str, Any], field_manager: str) -> Manifest: ...

    def delete(self, api_version: str, kind: str, namespace: str, name: str, uid: str | None = None) -> bool: ...

    def scale(self, namespace: str, deployment: str, replicas: int, field_manager: str) -> Manifest: ...

    def annotate(self, api_version: str, kind: str, namespace: str, name: str,
                 annotations: Mapping[str, str | None]) -> Manifest: ...

    def set_pod_condition(self, namespace: str, name: str, condition: Mapping[str, Any]) -> Manifest: ...

    def apply_status(self, body: Mapping[str, Any], status: Mapping[str, Any], field_manager: str) -> Manifest: ...

    def post_event(self, involved: Mapping[str, Any], event_type: str, reason: str, message: str) -> None: ...

    def close(self) -> None: ...


class LeasePort(Protocol):
    """The leader election's Lease (election.py); kube.Kube serves it. Raises kube.KubeError: a 409 when
    someone else created or changed the Lease first."""

    def get(self, api_version: str, kind: str, namespace: str, name: str,
            timeout: float | None = None) -> Manifest | None: ...

    def create(self, manifest: Mapping[str, Any], field_manager: str, timeout: float | None = None) -> Manifest: ...

    def replace(self, manifest: Mapping[str, Any], field_manager: str, timeout: float | None = None) -> Manifest: ...

    def close(self) -> None: ...


class BrokerSession(Protocol):
    """One broker, as the TaskQueues using it read it. Reads raise broker.urls.BrokerUnavailable."""

    def read_depths(self, queues: Sequence[str]) -> dict[str, QueueDepth]: ...

    def activity(self, queue: str, pods: Collection[str]) -> QueueActivity: ...

    def workers(self, queue: str, pods: Collection[str]) -> list[WorkerState]: ...

    def busy_workers(self, worker_names: Collection[str], timeout: float) -> set[str]: ...

    def watch_idle_queues(self, user: str, queues: Collection[str]) -> None: ...


class BrokerPort(Protocol):
    def probe(self, url: str) -> ProbeResult:
        """Whether the broker answers (else why not, no password in it), and a Redis broker's memory."""

    def count_messages(self, url: str, queues: Sequence[str]) -> int:
        """Messages `queues` hold, waiting or reserved. Raises broker.urls.BrokerUnavailable."""

    def session(self, user: str, url: str) -> BrokerSession:
        """The broker's session for `user` (a TaskQueue uid), opened on first use."""

    def release(self, user: str) -> None: ...

    def close(self) -> None: ...


class BeatStatePort(Protocol):
    """Every call raises broker.urls.BrokerUnavailable when the state Redis does not answer."""

    def read(self, location: StateLocation, job: str | None = None) -> BeatState: ...

    def write_jobs(self, location: StateLocation, upserts: Mapping[str, tuple[str | None, str]],
                   removals: Mapping[str, str | None]) -> list[str]: ...

    def remove_job(self, location: StateLocation, job: str) -> bool: ...

    def delete(self, location: StateLocation) -> None: ...

    def close(self) -> None: ...
