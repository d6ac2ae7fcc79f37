"""TLS material: a deployment's own CA, server and client certificates, and the gRPC
credentials built from them.

`ensure_local_pki` is what `make run` uses on first start (reused afterwards): one CA,
one server certificate for 127.0.0.1/localhost (every local service presents it) and one
client certificate (what the gateway, the tools and the tests present to the internal
services, which require one: mTLS). A real deployment brings its own files through the
same settings (VIDREC_TLS_*).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def ensure_local_pki(directory: Path, days: int = 825,
                     hosts: tuple[str, ...] = ()) -> Pki:
    """Create (once) a CA and a server and a client certificate under `directory`. The
    server certificate names localhost, 127.0.0.1 and `hosts` (compose or Kubernetes
    service names, so services can call each other by name)."""
    d = Path(directory)
    pki = Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem",
              d / "client.key")
    if all(p.exists() for p in (pki.ca, pki.server_cert, pki.server_key, pki.client_cert,
                                pki.client_key)):
        return pki
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vidrec local"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("vidrec local CA"))
          .issuer_name(name("vidrec local CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usage: x509.ObjectIdentifier) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=days))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if usage == ExtendedKeyUsageOID.SERVER_AUTH:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                *(x509.DNSName(h) for h in hosts)]), critical=False)
        cert = b.sign(ca_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), pem_key(key)

    server_cert, server_key = leaf("vidrec service", ExtendedKeyUsageOID.SERVER_AUTH)
    client_cert, client_key = leaf("vidrec client", ExtendedKeyUsageOID.CLIENT_AUTH)
    _write_private(pki.server_key, server_key)
    _write_private(pki.client_key, client_key)
    pki.server_cert.write_bytes(server_cert)
    pki.client_cert.write_bytes(client_cert)
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))  # last: marks complete
    return pki


def server_credentials(cert: str, key: str, ca: str = "",
                       require_client_cert: bool = False) -> grpc.ServerCredentials:
    """TLS with this server's certificate; with `require_client_cert`, only clients whose
    certificate `ca` signed get through the handshake (mTLS)."""
    if require_client_cert and not ca:
        raise ValueError("mTLS needs the CA that signs client certificates (VIDREC_TLS_CA)")
    return grpc.ssl_server_credentials(
        [(Path(key).read_bytes(), Path(cert).read_bytes())],
        root_certificates=Path(ca).read_bytes() if ca else None,
        require_client_auth=require_client_cert)


def channel_credentials(ca: str, cert: str = "", key: str = "") -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes() if ca else None,
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None)


def is_loopback(listen_addr: str) -> bool:
    host = listen_addr.rsplit(":", 1)[0].strip("[]")
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or 0.0.0.0 / [::]: reachable from elsewhere
