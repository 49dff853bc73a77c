"""The beat's liveness: is its loop still going round? And the tiny HTTP endpoint that says so.

The loop (runner.py) reports to a `Liveness` before every wait ("back in N seconds") and after
every send it attempts. The beat is live while it is not overdue by more than `allowance`
seconds: that covers the slowest honest stretch of work between two reports (a Redis call with
its 2 s timeouts and one retry, a send with its own bounded retries), while the waits themselves,
however long the backoff, never count. A beat that cannot reach Redis keeps going round (failing,
backing off) and stays live: a restart would not help, and the operator reports BeatReady False
already. Only a loop that stopped going round is unhealthy.

`GET /healthz` on the health port answers 200 while live and 503 with the reason when wedged; a
frozen process (SIGSTOP, a stuck interpreter) answers nothing and the kubelet's probe times out.
It costs one HTTP request every few seconds, answered by a daemon thread from a timestamp: no
process is spawned, no broker is asked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

HEALTH_PATH: Final = "/healthz"
ALLOWANCE_SECONDS: Final = 10.0  # longest honest work between two reports of the loop


@dataclass(frozen=True)
class Health:
    live: bool
    reason: str


class Liveness:
    """When the loop promised to report next. Written by the loop's thread, read by the server's."""

    def __init__(self, allowance: float = ALLOWANCE_SECONDS, clock: Callable[[], float] = time.monotonic,
                 subject: str = "the beat's loop"):
        self.allowance = allowance
        self.clock = clock
        self.subject = subject  # whose loop, in the answer (the operator's standby uses it too)
        self._due = clock()  # a loop that never finishes its first round is wedged too

    def progressed(self, back_within: float = 0.0) -> None:
        """The loop made progress and will report again within `back_within` seconds (plus its allowance)."""
        self._due = self.clock() + back_within

    def health(self) -> Health:
        overdue = self.clock() - self._due
        if overdue > self.allowance:
            return Health(False, f"wedged: {self.subject} is {overdue:.1f} s overdue "
                                  f"(allowed {self.allowance:.0f} s)")
        return Health(True, f"ok: {self.subject} goes round")


def _handler(liveness: Liveness) -> type[BaseHTTPRequestHandler]:
    class HealthHandler(BaseHTTPRequestHandler):
        timeout = 5  # a client that connects and says nothing does not hold a thread forever

        def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
            if self.path.split("?", 1)[0] != HEALTH_PATH:
                self._answer(404, "not found\n")
                return
            health = liveness.health()
            self._answer(200 if health.live else 503, health.reason + "\n")

        def _answer(self, status: int, text: str) -> None:
            body = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass  # one line per probe every few seconds would drown the beat's own log

    return HealthHandler


class HealthServer:
    """`GET /healthz` from a daemon thread; `port` 0 picks a free one (tests)."""

    def __init__(self, liveness: Liveness, port: int, address: str = ""):
        self._server = ThreadingHTTPServer((address, port), _handler(liveness))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="beat-health", daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
