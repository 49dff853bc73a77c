"""Free TCP ports for servers the devcluster and the tests start."""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _worker_slice(first: int, last: int) -> tuple[int, int]:
    """The part of [first, last] this process picks from: parallel test workers (pytest-xdist sets
    PYTEST_XDIST_WORKER=gw<n> of PYTEST_XDIST_WORKER_COUNT, and their servers' processes inherit it)
    take disjoint parts, so two never pick the same port between the probe and the server's bind."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 1):
        return first, last
    size = (last - first + 1) // int(count)
    start = first + (int(worker[2:]) % int(count)) * size
    return start, start + size - 1


def free_port() -> int:
    """A free port of 127.0.0.1 below the ephemeral range.

    A port from bind(0) is an ephemeral one: until the server binds it, any outgoing connection
    may take it (seen here: kube-controller-manager "address already in use", RabbitMQ's
    distribution port). Ports below the range are taken only by servers.
    """
    ephemeral_low = _ephemeral_range()[0]
    first, last = _worker_slice(max(1024, ephemeral_low - 15000), ephemeral_low - 1)
    for _ in range(500):
        port = random.randint(first, last)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")
