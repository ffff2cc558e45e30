"""Certificates for trials and tests of a deployment: a self-signed CA with a SuperLink certificate it signs
(TLS), and SuperNode key pairs (SuperNode authentication). A real federation's come from its own CA.
``cryptography`` is imported only when one is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

CA_CERT, SERVER_CERT, SERVER_KEY = "ca.crt", "server.pem", "server.key"
"""The file names ``make_certificates`` writes and ``fedpeft superlink --certificates`` reads."""


def make_certificates(
    directory: str | Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: int = 365
) -> tuple[Path, Path, Path]:
    """A self-signed CA and a SuperLink certificate it signs, valid for ``hosts`` (IP addresses or DNS
    names), written as ca.crt, server.pem and server.key. For tests and trials: a real federation's
    certificates come from its own CA. Returns the three paths."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days))

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("fedpeft test CA"))
        .issuer_name(name("fedpeft test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (out / CA_CERT, out / SERVER_CERT, out / SERVER_KEY)
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths[2].chmod(0o600)
    return paths


def make_node_keys(directory: str | Path, n: int) -> list[tuple[str, str]]:
    """``n`` SuperNode key pairs for SuperNode authentication (ECDSA P-384, as Flower's docs generate them):
    node-N (private, OpenSSH PEM) and node-N.pub (OpenSSH public key, what the SuperLink is told to accept)."""

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(n):
        key = ec.generate_private_key(ec.SECP384R1())
        private, public = out / f"node-{i}", out / f"node-{i}.pub"
        private.write_bytes(  # OpenSSH format: what flower-supernode reads
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
        )
        private.chmod(0o600)
        public.write_bytes(
            key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        )
        pairs.append((str(private), str(public)))
    return pairs
