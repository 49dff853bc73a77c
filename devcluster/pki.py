"""Certificates and keys for the devcluster: one CA, the API server's serving certificate,
client certificates for the admin and the control-plane components, the ServiceAccount
token signing key pair, and the aggregation layer's front-proxy CA and client certificate. Written once per cluster directory and reused by later `up` calls."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=3650)
APISERVER_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                   "kubernetes.default.svc.cluster.local")


@dataclass(frozen=True)
class ClientIdentity:
    file_stem: str
    common_name: str
    organization: str | None = None


CLIENTS = (
    ClientIdentity("admin", "devcluster-admin", "system:masters"),
    ClientIdentity("controller-manager", "system:kube-controller-manager"),
    ClientIdentity("scheduler", "system:kube-scheduler"),
    ClientIdentity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"),
    ClientIdentity("kube-proxy", "system:kube-proxy"),
)


# The aggregation layer: the API server proxies to extension API servers (KEDA's metrics server)
# with this client certificate, and they trust the X-Remote-* headers only from a certificate
# signed by this CA with this name (published in kube-system/extension-apiserver-authentication).
FRONT_PROXY_CA_STEM = "front-proxy-ca"
FRONT_PROXY_CLIENT = ClientIdentity("front-proxy-client", "front-proxy-client")


def node_identity(node_name: str) -> ClientIdentity:
    """The kubelet's client identity, which the Node authorizer and NodeRestriction expect."""
    return ClientIdentity(f"kubelet-{node_name}", f"system:node:{node_name}", "system:nodes")


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key) -> None:
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    path.chmod(0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        parts.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(parts)


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY))


def _make_ca(directory: Path, stem: str = "ca", common_name: str = "devcluster-ca",
             ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = _name(common_name)
    cert = (_builder(name, name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_key(directory / f"{stem}.key", key)
    _write_cert(directory / f"{stem}.crt", cert)
    return cert, key


def _issue(directory: Path, stem: str, subject: x509.Name, usage, ca_cert, ca_key,
           sans: list[x509.GeneralName] | None = None) -> None:
    key = _new_key()
    builder = (_builder(subject, ca_cert.subject, key.public_key())
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    _write_key(directory / f"{stem}.key", key)
    _write_cert(directory / f"{stem}.crt", builder.sign(ca_key, hashes.SHA256()))


def _service_account_keys(directory: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(directory / "sa.key", key)
    (directory / "sa.pub").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def ensure_client(directory: Path, client: ClientIdentity) -> None:
    """A client certificate signed by the cluster's CA, unless it exists already."""
    if (directory / f"{client.file_stem}.crt").exists():
        return
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
    _issue(directory, client.file_stem, _name(client.common_name, client.organization),
           ExtendedKeyUsageOID.CLIENT_AUTH, ca_cert, ca_key)


def ensure_front_proxy(directory: Path) -> None:
    """The front-proxy CA and its client certificate, unless they exist already: a CA of their own,
    so that no other certificate of the cluster's CA can claim to be the proxying API server."""
    if (directory / f"{FRONT_PROXY_CLIENT.file_stem}.crt").exists():
        return
    ca_cert, ca_key = _make_ca(directory, FRONT_PROXY_CA_STEM, "devcluster-front-proxy-ca")
    _issue(directory, FRONT_PROXY_CLIENT.file_stem, _name(FRONT_PROXY_CLIENT.common_name),
           ExtendedKeyUsageOID.CLIENT_AUTH, ca_cert, ca_key)


def ensure_pki(directory: Path, service_ip: str, apiserver_ips: tuple[str, ...] = ()) -> Path:
    """Create every certificate and key under `directory` unless they already exist; the API
    server's certificate holds 127.0.0.1, `service_ip` and `apiserver_ips` (re-issued when those
    change)."""
    directory.mkdir(parents=True, exist_ok=True)
    ips = sorted({"127.0.0.1", service_ip, *apiserver_ips})
    marker = directory / "complete"
    if marker.exists():
        ensure_front_proxy(directory)  # a directory made before the aggregation layer was configured
        if marker.read_text().split() != ips:
            ca_cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
            ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), password=None)
            _issue_apiserver(directory, ca_cert, ca_key, ips)
            marker.write_text(" ".join(ips))
        return directory
    ca_cert, ca_key = _make_ca(directory)
    _issue_apiserver(directory, ca_cert, ca_key, ips)
    for client in CLIENTS:
        _issue(directory, client.file_stem, _name(client.common_name, client.organization),
               ExtendedKeyUsageOID.CLIENT_AUTH, ca_cert, ca_key)
    _service_account_keys(directory)
    ensure_front_proxy(directory)
    marker.write_text(" ".join(ips))
    return directory


def _issue_apiserver(directory: Path, ca_cert, ca_key, ips: list[str]) -> None:
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in APISERVER_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    _issue(directory, "apiserver", _name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, ca_cert, ca_key, sans)
