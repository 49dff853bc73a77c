"""Addresses: pod IPs handed out from the pod network, and loopback addresses for cluster IPs.

Every pod gets an address of its own from `--pod-network` (127.A.0.0/16 by default: the whole
of 127/8 is local on Linux, so a pod can bind its IP without any host change). The first
address of the network is the node's own (status.hostIP). Addresses are handed out in turn and
an address is never given to a second pod while the first still holds it.

A Service's cluster IP (10.x) is not local: the agent adds it to `lo` as a /32 and records it
in the cluster directory, so that shutdown and `cleanup()` remove exactly what was added. A pod
network outside 127/8 works the same way (each pod IP and the node's address are added to `lo`,
and removed when the pod goes or by `cleanup()`); such a network has the advantage that the
control plane's EndpointSlice validation, which refuses loopback addresses, accepts its IPs.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import subprocess
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)


class AddressPoolExhausted(RuntimeError):
    pass


class PodAddressPool:
    """Pod IPs of one network; an owner (a pod UID) holds at most one address."""

    def __init__(self, network: str) -> None:
        self.network = ipaddress.IPv4Network(network, strict=False)
        if self.network.num_addresses < 4:
            raise ValueError(f"pod network {network} is too small")
        self.host_ip = str(self.network.network_address + 1)
        self._first = int(self.network.network_address) + 2
        self._last = int(self.network.broadcast_address) - 1
        self._cursor = self._first
        self._by_owner: dict[str, str] = {}
        self._owner_of: dict[str, str] = {}

    def contains(self, ip: str) -> bool:
        try:
            value = int(ipaddress.IPv4Address(ip))
        except ValueError:
            return False
        return self._first <= value <= self._last

    def address_of(self, owner: str) -> str | None:
        return self._by_owner.get(owner)

    def claim(self, owner: str, ip: str) -> bool:
        """Record that `owner` already holds `ip` (a pod adopted after a restart)."""
        if not self.contains(ip) or self._owner_of.get(ip, owner) != owner:
            return False
        previous = self._by_owner.get(owner)
        if previous and previous != ip:
            self._owner_of.pop(previous, None)
        self._by_owner[owner] = ip
        self._owner_of[ip] = owner
        return True

    def allocate(self, owner: str) -> str:
        """The owner's address, handing out the next free one the first time."""
        existing = self._by_owner.get(owner)
        if existing:
            return existing
        size = self._last - self._first + 1
        for _ in range(size):
            candidate = str(ipaddress.IPv4Address(self._cursor))
            self._cursor = self._cursor + 1 if self._cursor < self._last else self._first
            if candidate not in self._owner_of:
                self._by_owner[owner] = candidate
                self._owner_of[candidate] = owner
                return candidate
        raise AddressPoolExhausted(f"no free address left in {self.network}")

    def release(self, owner: str) -> None:
        ip = self._by_owner.pop(owner, None)
        if ip is not None:
            self._owner_of.pop(ip, None)

    @property
    def held(self) -> dict[str, str]:
        return dict(self._by_owner)


# --- loopback addresses ------------------------------------------------------------------------

def is_bindable(ip: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((ip, 0))
        except OSError:
            return False
    return True


SERVICE_ADDRESSES = "service"
POD_ADDRESSES = "pod"


def _record_path(cluster_dir: Path, purpose: str) -> Path:
    return cluster_dir / "agent" / f"loopback-{purpose}-addresses.json"


def recorded_addresses(cluster_dir: Path, purpose: str = SERVICE_ADDRESSES) -> list[str]:
    try:
        return list(json.loads(_record_path(cluster_dir, purpose).read_text()))
    except (OSError, ValueError):
        return []


def _save_record(cluster_dir: Path, purpose: str, addresses: Iterable[str]) -> None:
    path = _record_path(cluster_dir, purpose)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(sorted(set(addresses))))
    temporary.replace(path)


def _run_ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


def ensure_local_address(cluster_dir: Path, ip: str, purpose: str = SERVICE_ADDRESSES) -> bool:
    """Make `ip` bindable, adding it to `lo` (and recording that) if it is not. True if bindable."""
    if is_bindable(ip):
        return True
    # record first: a crash between adding and recording must not leave an address nobody removes
    _save_record(cluster_dir, purpose, [*recorded_addresses(cluster_dir, purpose), ip])
    result = _run_ip("addr", "add", f"{ip}/32", "dev", "lo")
    if result.returncode != 0 and "File exists" not in result.stderr:
        log.warning("cannot add %s to lo: %s", ip, result.stderr.strip())
    return is_bindable(ip)


def remove_local_address(cluster_dir: Path, ip: str, purpose: str = SERVICE_ADDRESSES) -> None:
    """Remove `ip` from `lo` if this cluster's agent added it."""
    recorded = recorded_addresses(cluster_dir, purpose)
    if ip not in recorded:
        return
    _delete_from_loopback(ip)
    _save_record(cluster_dir, purpose, [address for address in recorded if address != ip])


def remove_all_local_addresses(cluster_dir: Path, purposes: Iterable[str] = (SERVICE_ADDRESSES, POD_ADDRESSES)) -> None:
    for purpose in purposes:
        recorded = recorded_addresses(cluster_dir, purpose)
        for ip in recorded:
            _delete_from_loopback(ip)
        if recorded:
            _save_record(cluster_dir, purpose, [])


def _delete_from_loopback(ip: str) -> None:
    address = ipaddress.IPv4Address(ip)
    if address == ipaddress.IPv4Address("127.0.0.1"):
        return
    result = _run_ip("addr", "del", f"{ip}/32", "dev", "lo")
    if result.returncode != 0 and not any(gone in result.stderr for gone in ("Cannot assign", "not found")):
        log.warning("cannot remove %s from lo: %s", ip, result.stderr.strip())
