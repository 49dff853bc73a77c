"""The `<tq>-broker` Secret: how workers, beat, Flower and the user's producers reach the broker.

Values go into base64 `data` (not `stringData`) so the desired object compares exactly with the
live one.
"""

from __future__ import annotations

import base64
from urllib.parse import quote

from .. import naming
from ..models import BrokerSpec, ObjectIdentity
from .common import Manifest, object_meta


def redis_service_url(service: str, namespace: str, password: str) -> str:
    """The URL of an operator-run Redis behind Service `service`, reachable from any namespace."""
    return f"redis://:{quote(password, safe='')}@{service}.{namespace}.svc:{naming.REDIS_PORT}/0"


def managed_broker_url(taskqueue: str, namespace: str, password: str) -> str:
    """The URL of the operator-run Redis broker, reachable from any namespace through its Service."""
    return redis_service_url(naming.broker_name(taskqueue), namespace, password)


def broker_url(
    owner: ObjectIdentity,
    broker: BrokerSpec,
    *,
    password: str | None = None,
    external_url: str | None = None,
) -> str:
    """The URL the Secret carries for each broker kind.

    managed: built from `password` (generated once by the reconciler, then read back from the
    Secret); url: spec.broker.url; secretRef: `external_url`, the value the reconciler read from
    the user's Secret.
    """
    if broker.kind == "managed":
        if not password:
            raise ValueError("a managed broker needs its password")
        return managed_broker_url(owner.name, owner.namespace, password)
    if broker.kind == "url":
        assert broker.url is not None
        return broker.url
    if not external_url:
        raise ValueError("a urlSecretRef broker needs the URL read from the referenced Secret")
    return external_url


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def build_broker_secret(
    owner: ObjectIdentity,
    broker: BrokerSpec,
    *,
    password: str | None = None,
    external_url: str | None = None,
) -> Manifest:
    """Key `url` always; key `password` for the managed broker."""
    data = {naming.BROKER_SECRET_URL_KEY: b64(broker_url(owner, broker, password=password, external_url=external_url))}
    if broker.kind == "managed":
        assert password is not None
        data[naming.BROKER_SECRET_PASSWORD_KEY] = b64(password)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": object_meta(owner, naming.broker_name(owner.name), naming.BROKER),
        "type": "Opaque",
        "data": data,
    }
