"""A small asyncio Kubernetes API client (aiohttp) and a list-then-watch reflector.

Just what a node agent needs: JSON requests with the kubeconfig's credentials, patches of the
status subresource, and watches that survive expired resource versions and dropped connections.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Mapping

import aiohttp
import yaml

log = logging.getLogger(__name__)

PATCH_TYPES = {
    "strategic": "application/strategic-merge-patch+json",
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
}
USER_AGENT = "devcluster-node-agent/0.1 (kubelet-like)"


class ApiError(Exception):
    def __init__(self, status: int, body: Any, method: str = "", path: str = "") -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else str(body)[:500]
        super().__init__(f"{method} {path}: {status} {message}")

    @property
    def reason(self) -> str:
        return self.body.get("reason", "") if isinstance(self.body, dict) else ""


@dataclass(frozen=True)
class KubeConfig:
    server: str
    ca_data: bytes
    client_cert_file: str | None = None
    client_key_file: str | None = None
    token: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca_data.decode())
        if self.client_cert_file:
            context.load_cert_chain(self.client_cert_file, self.client_key_file)
        return context


def _file_or_data(section: Mapping[str, Any], file_key: str, data_key: str, base: Path) -> bytes | None:
    if section.get(data_key):
        return base64.b64decode(section[data_key])
    if section.get(file_key):
        path = Path(section[file_key])
        return (path if path.is_absolute() else base / path).read_bytes()
    return None


def load_kubeconfig(path: Path, scratch_dir: Path | None = None) -> KubeConfig:
    """The current context's server, CA and credentials (client certificate or token)."""
    config = yaml.safe_load(path.read_text())
    base = path.parent
    context_name = config.get("current-context")
    context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    user = next((u["user"] for u in config.get("users") or [] if u["name"] == context.get("user")), {})
    ca = _file_or_data(cluster, "certificate-authority", "certificate-authority-data", base) or b""
    cert = _file_or_data(user, "client-certificate", "client-certificate-data", base)
    key = _file_or_data(user, "client-key", "client-key-data", base)
    cert_file = key_file = None
    if cert and key:
        directory = scratch_dir or Path(tempfile.mkdtemp(prefix="devcluster-agent-"))
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / "client.crt", directory / "client.key"
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        cert_path.write_bytes(cert)
        cert_file, key_file = str(cert_path), str(key_path)
    return KubeConfig(server=cluster["server"].rstrip("/"), ca_data=ca, client_cert_file=cert_file,
                      client_key_file=key_file, token=user.get("token"))


class KubeClient:
    def __init__(self, config: KubeConfig) -> None:
        self.config = config
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if config.token:
            headers["Authorization"] = f"Bearer {config.token}"
        self._session = aiohttp.ClientSession(
            base_url=config.server, headers=headers,
            connector=aiohttp.TCPConnector(ssl=config.ssl_context(), limit=64),
        )

    async def close(self) -> None:
        await self._session.close()

    async def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json", timeout: float = 30) -> Any:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else None
        async with self._session.request(method, path, params=_params(params), data=data, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            text = await response.text()
            try:
                payload = json.loads(text) if text else None
            except ValueError:
                payload = text
            if response.status >= 400:
                raise ApiError(response.status, payload, method, path)
            return payload

    async def get(self, path: str, **params: Any) -> Any:
        return await self.request("GET", path, params=params)

    async def post(self, path: str, body: Any, **params: Any) -> Any:
        return await self.request("POST", path, params=params, body=body)

    async def put(self, path: str, body: Any) -> Any:
        return await self.request("PUT", path, body=body)

    async def patch(self, path: str, body: Any, patch_type: str = "strategic", **params: Any) -> Any:
        return await self.request("PATCH", path, params=params, body=body, content_type=PATCH_TYPES[patch_type])

    async def delete(self, path: str, body: Any = None, **params: Any) -> Any:
        return await self.request("DELETE", path, params=params, body=body)

    async def watch(self, path: str, params: Mapping[str, Any]) -> AsyncIterator[dict]:
        """Yield watch events until the server ends the watch."""
        query = dict(params, watch="true")
        read_limit = float(query.get("timeoutSeconds", 300)) + 30
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=read_limit)
        async with self._session.get(path, params=_params(query), timeout=timeout) as response:
            if response.status >= 400:
                text = await response.text()
                try:
                    payload = json.loads(text)
                except ValueError:
                    payload = text
                raise ApiError(response.status, payload, "WATCH", path)
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)


def _params(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    return {key: (str(value).lower() if isinstance(value, bool) else str(value))
            for key, value in params.items() if value is not None}


Handler = Callable[[str, dict], None]


class Reflector:
    """List, then watch from the list's resourceVersion; re-list when the version expires.
    Calls `handler(event_type, object)` for ADDED, MODIFIED and DELETED (also the ones a re-list
    reveals), keyed by UID. `synced` is set after the first complete list."""

    def __init__(self, client: KubeClient, path: str, handler: Handler, *, name: str,
                 params: Mapping[str, Any] | None = None) -> None:
        self.client = client
        self.path = path
        self.params = dict(params or {})
        self.handler = handler
        self.name = name
        self.store: dict[str, dict] = {}
        self.synced = asyncio.Event()

    def _emit(self, kind: str, obj: dict) -> None:
        try:
            self.handler(kind, obj)
        except Exception:
            log.exception("%s: handling %s of %s failed", self.name, kind, _describe(obj))

    async def _list(self) -> str:
        listing = await self.client.get(self.path, **self.params)
        fresh = {item["metadata"]["uid"]: item for item in listing.get("items") or []}
        for uid, old in list(self.store.items()):
            if uid not in fresh:
                del self.store[uid]
                self._emit("DELETED", old)
        for uid, item in fresh.items():
            previous = self.store.get(uid)
            self.store[uid] = item
            if previous is None:
                self._emit("ADDED", item)
            elif previous["metadata"].get("resourceVersion") != item["metadata"].get("resourceVersion"):
                self._emit("MODIFIED", item)
        self.synced.set()
        return listing["metadata"]["resourceVersion"]

    async def run(self) -> None:
        failures = 0
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list()
                params = dict(self.params, resourceVersion=version, allowWatchBookmarks=True,
                              timeoutSeconds=random.randint(240, 420))
                async for event in self.client.watch(self.path, params):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            version = None
                        else:
                            log.warning("%s: watch error %s", self.name, obj.get("message"))
                            version = None
                        break
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind == "BOOKMARK":
                        continue
                    uid = obj["metadata"]["uid"]
                    if kind == "DELETED":
                        self.store.pop(uid, None)
                    else:
                        self.store[uid] = obj
                    self._emit(kind, obj)
                failures = 0
            except asyncio.CancelledError:
                raise
            except ApiError as failure:
                if failure.status == 410:
                    version = None
                    continue
                failures += 1
                log.warning("%s: %s", self.name, failure)
                await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as failure:
                failures += 1
                log.warning("%s: connection problem (%s); retrying", self.name, failure or type(failure).__name__)
                version = None if failures > 3 else version
                await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 6)))


def _describe(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"
