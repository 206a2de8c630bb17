"""A federation's certificate authority and the SuperLink's TLS certificate.

``init`` creates a self-signed CA (ECDSA P-384) and a server certificate it signs, with the subject alternative
names the operator lists (DNS names and IP addresses). Sites verify the SuperLink against the CA certificate only,
so the CA's private key can stay offline after ``init``. TLS 1.3 is negotiated by gRPC/HTTP stacks that support it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.certs.files import write_private, write_public
from common.errors import CertificateError

CA_CERT, CA_KEY = "ca.pem", "ca.key"
SERVER_CERT, SERVER_KEY = "server.pem", "server.key"
DEFAULT_SANS = ("localhost", "127.0.0.1", "superlink")


@dataclass(frozen=True)
class FederationCerts:
    """Where a federation's certificate files are."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        """The CA certificate (public; every site needs it)."""
        return self.directory / CA_CERT

    @property
    def ca_key(self) -> Path:
        """The CA private key (keep offline)."""
        return self.directory / CA_KEY

    @property
    def server_cert(self) -> Path:
        """The SuperLink's certificate."""
        return self.directory / SERVER_CERT

    @property
    def server_key(self) -> Path:
        """The SuperLink's private key."""
        return self.directory / SERVER_KEY


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedtune"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _san(entries: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for entry in entries:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(entry)))
        except ValueError:
            if not entry or any(c.isspace() for c in entry):
                raise CertificateError(f"not a DNS name or IP address for the certificate: {entry!r}") from None
            names.append(x509.DNSName(entry))
    return x509.SubjectAlternativeName(names)


def init_federation(directory: Path, *, sans: tuple[str, ...] = DEFAULT_SANS, days: int = 365) -> FederationCerts:
    """Create ca.pem/ca.key and server.pem/server.key in ``directory`` (keys 0600; nothing is overwritten)."""
    if days < 1:
        raise CertificateError(f"certificate validity must be at least 1 day; got {days}")
    if not sans:
        raise CertificateError("the server certificate needs at least one subject alternative name")
    certs = FederationCerts(directory)
    existing = [p for p in (certs.ca_cert, certs.ca_key, certs.server_cert, certs.server_key) if p.exists()]
    if existing:
        raise CertificateError(f"{existing[0]}: file exists; refusing to overwrite a federation's certificates")
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedtune federation CA"))
        .issuer_name(_name("fedtune federation CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=max(days, 3650)))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(sans[0]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(_san(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    unencrypted = serialization.NoEncryption()
    write_private(certs.ca_key, ca_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, unencrypted))
    write_public(certs.ca_cert, ca_cert.public_bytes(pem))
    write_private(certs.server_key, server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, unencrypted))
    write_public(certs.server_cert, server_cert.public_bytes(pem))
    return certs
