"""Check certificates and keys BEFORE any process starts, so a bad file is one clear error, not a hung node.

Rules: files readable and of the right kind; certificates inside their validity period; the server key matches the
server certificate; the server certificate is issued by the federation CA and names the host sites dial; private
keys not readable by other users. :func:`probe_tls` additionally verifies a live SuperLink against the CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import time
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from common.certs.authority import FederationCerts
from common.certs.files import check_private_permissions, read_file
from common.errors import CertificateError, FederationError


def load_certificate(path: Path, what: str = "certificate") -> x509.Certificate:
    """A PEM certificate, checked to be inside its validity period."""
    data = read_file(path, what)
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError(f"{path}: not a PEM certificate ({exc})") from None
    now = dt.datetime.now(dt.UTC)
    if now < cert.not_valid_before_utc:
        raise CertificateError(f"{path}: the {what} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > cert.not_valid_after_utc:
        raise CertificateError(f"{path}: the {what} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    return cert


def check_ca(path: Path) -> x509.Certificate:
    """The federation CA certificate (valid, and a CA)."""
    cert = load_certificate(path, "CA certificate")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CertificateError(f"{path}: not a CA certificate (basicConstraints CA:FALSE or missing)")
    return cert


def _same_key(a: CertificatePublicKeyTypes, b: object) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)  # type: ignore[attr-defined]


def check_server_certs(certs: FederationCerts, *, host: str | None = None) -> None:
    """Everything a TLS SuperLink needs: a valid CA, a server cert it issued, the matching key, the host named."""
    ca = check_ca(certs.ca_cert)
    server = load_certificate(certs.server_cert, "server certificate")
    try:
        server.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise CertificateError(
            f"{certs.server_cert}: not issued by the federation CA {certs.ca_cert} ({type(exc).__name__})"
        ) from None
    data = read_file(certs.server_key, "server private key")
    check_private_permissions(certs.server_key)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{certs.server_key}: not an unencrypted PEM private key ({exc})") from None
    if not _same_key(server.public_key(), key.public_key()):
        raise CertificateError(f"{certs.server_key}: this key does not match {certs.server_cert}")
    if host is not None and host not in ("0.0.0.0", "::"):
        check_names_host(server, host, certs.server_cert)


def check_names_host(cert: x509.Certificate, host: str, path: Path) -> None:
    """The certificate's subject alternative names must cover ``host`` (what clients will verify)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError(f"{path}: the certificate has no subject alternative names") from None
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    try:
        matched = str(ipaddress.ip_address(host)) in ips
    except ValueError:
        matched = host in dns or any(name.startswith("*.") and host.endswith(name[1:]) for name in dns)
    if not matched:
        raise CertificateError(
            f"{path}: the certificate does not name {host!r} (it names {sorted(dns | ips)}); "
            "re-create it with `fedtune certs init --san` including that name"
        )


def probe_tls(address: str, ca: Path, *, timeout: float = 60.0) -> str:
    """Connect to ``host:port`` and verify its certificate against ``ca``; return the TLS version negotiated.

    Waits up to ``timeout`` seconds for the server to accept connections; a certificate that does not verify is
    final (CertificateError), as is an unreachable server at the deadline (FederationError).
    """
    host, _, port_text = address.rpartition(":")
    if not host or not port_text.isdigit():
        raise FederationError(f"SuperLink address must be HOST:PORT; got {address!r}")
    host = host.strip("[]")
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    deadline = time.monotonic() + timeout
    while True:
        try:
            with (
                socket.create_connection((host, int(port_text)), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=host) as tls,
            ):
                return str(tls.version())
        except ssl.SSLCertVerificationError as exc:
            raise CertificateError(
                f"the SuperLink at {address} presented a certificate that does not verify against {ca}: "
                f"{exc.verify_message}"
            ) from None
        except ssl.SSLError as exc:
            raise CertificateError(f"TLS with the SuperLink at {address} failed: {exc.reason}") from None
        except OSError as exc:
            if time.monotonic() > deadline:
                raise FederationError(f"cannot reach the SuperLink at {address}: {exc}") from None
            time.sleep(1.0)
