"""The part of the kubelet's HTTPS API that `kubectl logs` needs: the API server proxies
`pods/log` to https://<node InternalIP>:<daemonEndpoints.kubeletEndpoint.Port>/containerLogs/...

Served on the node's address (the pod network's first address, so clusters side by side do not
collide) with a self-signed serving certificate (the API server does not verify kubelet
certificates unless told to). Clients must present a certificate signed by the cluster CA; any
such client (in practice the API server's kubelet client) may read logs.
exec, attach and port-forward are not offered.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import ssl
from collections import deque
from pathlib import Path
from typing import Callable

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devcluster.agent.logs import container_running

log = logging.getLogger(__name__)

FOLLOW_POLL_SECONDS = 0.2
STOPPED_GRACE_SECONDS = 1.0


def write_serving_certificate(directory: Path, node_name: str, address: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{node_name}@devcluster-agent")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=365))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName(node_name),
                                                               x509.IPAddress(ipaddress.ip_address(address))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "kubelet.crt", directory / "kubelet.key"
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def last_lines(data: bytes, count: int) -> bytes:
    if count < 0:
        return data
    if count == 0:
        return b""
    return b"".join(deque(data.splitlines(keepends=True), maxlen=count))


class KubeletApi:
    def __init__(self, pod_dir: Callable[[str, str], Path], address: str, port: int, node_name: str,
                 state_dir: Path, ca_data: bytes) -> None:
        self.pod_dir = pod_dir
        self.address = address
        self.port = port
        self.node_name = node_name
        self.state_dir = state_dir
        self.ca_data = ca_data
        self.runner: web.AppRunner | None = None

    def _ssl_context(self) -> ssl.SSLContext:
        cert, key = write_serving_certificate(self.state_dir, self.node_name, self.address)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cadata=self.ca_data.decode())
        return context

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._container_logs)
        for verb in ("exec", "attach", "portForward", "run"):
            app.router.add_route("*", f"/{verb}/{{tail:.*}}", self._not_offered)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.address, self.port, ssl_context=self._ssl_context())
        try:
            await site.start()
            log.info("kubelet API (container logs) on https://%s:%d", self.address, self.port)
        except OSError as failure:
            log.warning("kubelet API not started on %s:%d: %s (kubectl logs will not work; "
                        "python -m devcluster logs does)", self.address, self.port, failure)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _not_offered(self, request: web.Request) -> web.Response:
        return web.Response(status=501, text="the devcluster node agent runs pods as plain processes and offers no "
                                             "exec, attach or port-forward: run the command on the host, in the "
                                             "pod's directory <cluster dir>/pods/<namespace>_<pod>/")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _container_logs(self, request: web.Request) -> web.StreamResponse:
        namespace, pod, container = (request.match_info[key] for key in ("namespace", "pod", "container"))
        query = request.query
        if query.get("previous") == "true":
            return web.Response(status=400, text=f'previous terminated container "{container}" in pod "{pod}" '
                                                 "not found (the devcluster node agent keeps one log per container)")
        path = self.pod_dir(namespace, pod) / "logs" / f"{container}.log"
        if not path.exists():
            return web.Response(status=400, text=f'container "{container}" in pod "{pod}" is waiting to start')
        data = await asyncio.to_thread(path.read_bytes)
        offset = len(data)
        data = last_lines(data, int(query.get("tailLines", "-1")))
        limit = int(query["limitBytes"]) if query.get("limitBytes") else None
        if limit is not None:
            data = data[:limit]
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        try:
            await response.prepare(request)
            await response.write(data)
            if query.get("follow") == "true" and (limit is None or len(data) < limit):
                await self._follow(response, path, self.pod_dir(namespace, pod), container, offset)
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away (kubectl logs -f interrupted)
        return response

    async def _follow(self, response: web.StreamResponse, path: Path, pod_dir: Path, container: str,
                      offset: int) -> None:
        stopped_since: float | None = None
        loop = asyncio.get_running_loop()
        with path.open("rb") as handle:
            handle.seek(offset)
            while True:
                chunk = handle.read(65536)
                if chunk:
                    await response.write(chunk)
                    stopped_since = None
                    continue
                if container_running(pod_dir, container):
                    stopped_since = None
                elif stopped_since is None:
                    stopped_since = loop.time()
                elif loop.time() - stopped_since > STOPPED_GRACE_SECONDS:
                    return
                await asyncio.sleep(FOLLOW_POLL_SECONDS)
