"""The devcluster's aggregation layer: the front-proxy certificates devcluster/pki.py makes and the
kube-apiserver flags that name them (what an extension API server such as KEDA's needs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devcluster import cluster, pki

pytestmark = pytest.mark.unit

SERVICE_IP = "10.120.0.1"


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _common_name(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        issuer.public_key().verify(cert.signature, cert.tbs_certificate_bytes,
                                   ec.ECDSA(cert.signature_hash_algorithm))
    except Exception:
        return False
    return cert.issuer == issuer.subject


def _flags(argv: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in argv[1:] if "=" in arg)


def _apiserver_flags(directory: Path, nodes: int = 1) -> dict[str, str]:
    state = cluster.ClusterState(etcd_port=1, etcd_peer_port=2, apiserver_port=3, controller_manager_port=4,
                                 scheduler_port=5, service_cidr="10.120.0.0/16", pod_network="10.220.0.0/16",
                                 nodes=nodes, node_cidr="10.170.0.0/24", cluster_id="t1")
    return _flags(cluster._apiserver_argv(Path("/bin"), cluster.Cluster(directory), state))


def test_front_proxy_client_is_signed_by_its_own_ca_not_the_clusters(tmp_path: Path) -> None:
    pki.ensure_pki(tmp_path, SERVICE_IP)
    client = _cert(tmp_path / "front-proxy-client.crt")
    front_proxy_ca = _cert(tmp_path / "front-proxy-ca.crt")
    assert _common_name(client) == "front-proxy-client"
    assert _signed_by(client, front_proxy_ca)
    assert not _signed_by(client, _cert(tmp_path / "ca.crt"))
    usages = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert front_proxy_ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_an_existing_cluster_directory_gains_the_front_proxy_certificates(tmp_path: Path) -> None:
    pki.ensure_pki(tmp_path, SERVICE_IP)
    for stem in ("front-proxy-ca", "front-proxy-client"):
        (tmp_path / f"{stem}.crt").unlink()
        (tmp_path / f"{stem}.key").unlink()
    cluster_ca = (tmp_path / "ca.crt").read_bytes()
    admin = (tmp_path / "admin.crt").read_bytes()

    pki.ensure_pki(tmp_path, SERVICE_IP)

    assert _signed_by(_cert(tmp_path / "front-proxy-client.crt"), _cert(tmp_path / "front-proxy-ca.crt"))
    assert (tmp_path / "ca.crt").read_bytes() == cluster_ca  # nothing else is re-issued
    assert (tmp_path / "admin.crt").read_bytes() == admin


def test_front_proxy_certificates_are_kept_across_starts(tmp_path: Path) -> None:
    pki.ensure_pki(tmp_path, SERVICE_IP)
    first = (tmp_path / "front-proxy-client.crt").read_bytes()
    pki.ensure_pki(tmp_path, SERVICE_IP, ("10.170.0.1",))  # a start that re-issues the serving certificate
    assert (tmp_path / "front-proxy-client.crt").read_bytes() == first


@pytest.mark.parametrize("nodes", [0, 1])
def test_apiserver_proxies_with_the_client_its_request_header_ca_trusts(tmp_path: Path, nodes: int) -> None:
    pki.ensure_pki(tmp_path / "pki", SERVICE_IP)
    flags = _apiserver_flags(tmp_path, nodes)

    proxy_client = _cert(Path(flags["proxy-client-cert-file"]))
    assert Path(flags["proxy-client-key-file"]).is_file()
    assert _signed_by(proxy_client, _cert(Path(flags["requestheader-client-ca-file"])))
    assert flags["requestheader-allowed-names"] == _common_name(proxy_client)
    assert flags["requestheader-username-headers"] == "X-Remote-User"
    assert flags["requestheader-group-headers"] == "X-Remote-Group"
    assert flags["requestheader-extra-headers-prefix"] == "X-Remote-Extra-"
    # the host routes the Service CIDR through a node: the aggregator dials the Service's IP
    assert "enable-aggregator-routing" not in flags
