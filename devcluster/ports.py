"""Free TCP ports for servers the devcluster and the tests start."""

from __future__ import annotations

import random
import socket
from pathlib import Path


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free port of 127.0.0.1 below the ephemeral range.

    A port from bind(0) is an ephemeral one: until the server binds it, any outgoing connection
    may take it (seen here: kube-controller-manager "address already in use", RabbitMQ's
    distribution port). Ports below the range are taken only by servers.
    """
    low, _ = _ephemeral_range()
    for _ in range(500):
        port = random.randint(max(1024, low - 15000), low - 1)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")
