"""Probes and lifecycle hook handlers: exec, httpGet, tcpSocket (and sleep for hooks).

`ProbeTracker` is the pure part: the kubelet's threshold rules. A probe's result only changes
after `successThreshold` consecutive successes or `failureThreshold` consecutive failures;
readiness starts as failure, liveness as success, startup as "not yet".
The runners execute one probe against a container: exec commands run with the container's
environment, working directory and hostname; network probes target the pod IP.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
from dataclasses import dataclass
from typing import Any, Mapping, Sequence
from urllib.parse import quote

from devcluster.agent import procs

OUTPUT_LIMIT = 10 * 1024
PROBE_USER_AGENT = "kube-probe/1.35"


@dataclass(frozen=True)
class ProbeSettings:
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int
    termination_grace: float | None

    @classmethod
    def from_spec(cls, probe: Mapping[str, Any]) -> "ProbeSettings":
        grace = probe.get("terminationGracePeriodSeconds")
        return cls(
            initial_delay=float(probe.get("initialDelaySeconds") or 0),
            period=float(probe.get("periodSeconds") or 10),
            timeout=float(probe.get("timeoutSeconds") or 1),
            success_threshold=int(probe.get("successThreshold") or 1),
            failure_threshold=int(probe.get("failureThreshold") or 3),
            termination_grace=float(grace) if grace is not None else None,
        )


class ProbeTracker:
    """Consecutive results of one probe of one container, and the result they add up to."""

    def __init__(self, settings: ProbeSettings, initial: bool | None) -> None:
        self.settings = settings
        self.result = initial
        self._last: bool | None = None
        self._run = 0

    def record(self, success: bool) -> bool:
        """Record one probe outcome; True when the overall result changed."""
        if self._last == success:
            self._run += 1
        else:
            self._last, self._run = success, 1
        threshold = self.settings.success_threshold if success else self.settings.failure_threshold
        if self._run < threshold:
            return False
        changed = self.result != success
        self.result = success
        return changed


@dataclass(frozen=True)
class ProbeOutcome:
    success: bool
    message: str = ""


@dataclass(frozen=True)
class ExecContext:
    """Where a container's exec handlers run."""

    env: Mapping[str, str]
    cwd: str
    hostname: str
    pod_ip: str
    container_ports: Sequence[Mapping[str, Any]] = ()
    source_ip: str | None = None  # probes come from the node's address, as on a real node


def local_address_for(host: str, source_ip: str | None) -> tuple[str, int] | None:
    """Bind outgoing connections to the node's loopback address when the target is loopback too."""
    if source_ip and host.startswith("127.") and source_ip.startswith("127."):
        return (source_ip, 0)
    return None


def dial_error(failure: BaseException) -> str:
    """An OS error worded the way Go's net package words it in kubelet probe messages."""
    if isinstance(failure, ConnectionRefusedError):
        return "connect: connection refused"
    if isinstance(failure, ConnectionResetError):
        return "read: connection reset by peer"
    if isinstance(failure, OSError) and failure.strerror:
        return f"connect: {failure.strerror.lower()}"
    return str(failure)


def resolve_port(port: Any, context: ExecContext) -> int | None:
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    for declared in context.container_ports:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    return None


async def run_exec(command: Sequence[str], context: ExecContext, timeout: float | None) -> ProbeOutcome:
    if not command:
        return ProbeOutcome(False, "exec handler without a command")
    try:
        process = await asyncio.create_subprocess_exec(
            *procs.with_hostname(command, context.hostname), env=dict(context.env), cwd=context.cwd,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as failure:
        return ProbeOutcome(False, f"exec failed: {failure}")
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        _kill_group(process.pid)
        await process.wait()
        return ProbeOutcome(False, f"command timed out: \"{' '.join(command)}\" timed out after {timeout:g}s")
    except asyncio.CancelledError:
        _kill_group(process.pid)
        raise
    text = output[:OUTPUT_LIMIT].decode(errors="replace")
    if process.returncode == 0:
        return ProbeOutcome(True, text)
    return ProbeOutcome(False, text or f"command \"{' '.join(command)}\" exited with {process.returncode}")


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


async def run_http_get(action: Mapping[str, Any], context: ExecContext, timeout: float) -> ProbeOutcome:
    port = resolve_port(action.get("port"), context)
    if port is None:
        return ProbeOutcome(False, f"unknown port {action.get('port')!r}")
    host = action.get("host") or context.pod_ip
    scheme = (action.get("scheme") or "HTTP").upper()
    path = action.get("path") or "/"
    if not path.startswith("/"):
        path = "/" + path
    headers = {"Host": f"{host}:{port}", "User-Agent": PROBE_USER_AGENT, "Accept": "*/*", "Connection": "close"}
    for header in action.get("httpHeaders") or ():
        headers[header.get("name", "")] = header.get("value", "")
    request = f"GET {quote(path, safe='/?&=%:@!$,;+*~')} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items() if name) + "\r\n"
    context_ssl = None
    if scheme == "HTTPS":
        context_ssl = ssl.create_default_context()
        context_ssl.check_hostname = False
        context_ssl.verify_mode = ssl.CERT_NONE

    async def exchange() -> ProbeOutcome:
        reader, writer = await asyncio.open_connection(host, port, ssl=context_ssl,
                                                       local_addr=local_address_for(host, context.source_ip))
        try:
            writer.write(request.encode())
            await writer.drain()
            status_line = await reader.readline()
        finally:
            writer.close()
        parts = status_line.decode(errors="replace").split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            return ProbeOutcome(False, f"malformed HTTP response: {status_line[:100]!r}")
        code = int(parts[1])
        if 200 <= code < 400:
            return ProbeOutcome(True, f"HTTP probe succeeded with statuscode: {code}")
        return ProbeOutcome(False, f"HTTP probe failed with statuscode: {code}")

    try:
        return await asyncio.wait_for(exchange(), timeout)
    except asyncio.TimeoutError:
        return ProbeOutcome(False, f'Get "{scheme.lower()}://{host}:{port}{path}": context deadline exceeded')
    except (OSError, ssl.SSLError) as failure:
        return ProbeOutcome(False, f'Get "{scheme.lower()}://{host}:{port}{path}": dial tcp {host}:{port}: '
                                   f'{dial_error(failure)}')


async def run_tcp_socket(action: Mapping[str, Any], context: ExecContext, timeout: float) -> ProbeOutcome:
    port = resolve_port(action.get("port"), context)
    if port is None:
        return ProbeOutcome(False, f"unknown port {action.get('port')!r}")
    host = action.get("host") or context.pod_ip
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=local_address_for(host, context.source_ip)), timeout)
    except asyncio.TimeoutError:
        return ProbeOutcome(False, f"dial tcp {host}:{port}: i/o timeout")
    except OSError as failure:
        return ProbeOutcome(False, f"dial tcp {host}:{port}: {dial_error(failure)}")
    writer.close()
    return ProbeOutcome(True)


async def run_handler(handler: Mapping[str, Any], context: ExecContext, timeout: float | None) -> ProbeOutcome:
    """Run one probe or lifecycle handler (exec, httpGet, tcpSocket, sleep)."""
    if handler.get("exec") is not None:
        return await run_exec(handler["exec"].get("command") or [], context, timeout)
    if handler.get("httpGet") is not None:
        return await run_http_get(handler["httpGet"], context, timeout or 3600)
    if handler.get("tcpSocket") is not None:
        return await run_tcp_socket(handler["tcpSocket"], context, timeout or 3600)
    if handler.get("sleep") is not None:
        await asyncio.sleep(float(handler["sleep"].get("seconds") or 0))
        return ProbeOutcome(True)
    if handler.get("grpc") is not None:
        return ProbeOutcome(False, "grpc probes are not supported by the devcluster node agent")
    return ProbeOutcome(False, "handler has no action")
