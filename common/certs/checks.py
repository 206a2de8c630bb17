"""Check certificates and keys BEFORE any process starts, so a bad file is one clear error, not a hung node.

Rules: files readable and of the right kind; certificates inside their validity period; the server key matches the
server certificate; the server certificate chains to the federation CA and names the host sites dial; private keys
not readable by other users. The chain and the host name are judged by ``cryptography.x509.verification`` (the Web
PKI profile TLS clients apply, wildcards and case included), not by hand. :func:`probe_tls` additionally verifies a
live SuperLink against the CA.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.verification import PolicyBuilder, ServerVerifier, Store, Subject, VerificationError

from common.certs.authority import FederationCerts
from common.certs.files import check_private_permissions, read_file
from common.errors import CertificateError, FederationError
from common.polling import WaitTimeout, wait_until

#: Bind addresses that listen on every interface: they name no host a certificate could be checked for.
WILDCARD_BINDS = ("0.0.0.0", "::", "")


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
    """Everything a TLS SuperLink needs: a valid CA, a server cert it issued, the matching key, the host named.

    ``host`` is the name sites dial; a wildcard bind address (``0.0.0.0``, ``::``) names no host and is not checked.
    """
    ca = check_ca(certs.ca_cert)
    server = load_certificate(certs.server_cert, "server certificate")
    _check_chain(server, ca, certs)
    data = read_file(certs.server_key, "server private key")
    check_private_permissions(certs.server_key)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{certs.server_key}: not an unencrypted PEM private key ({exc})") from None
    if not _same_key(server.public_key(), key.public_key()):
        raise CertificateError(f"{certs.server_key}: this key does not match {certs.server_cert}")
    if host is not None and host not in WILDCARD_BINDS:
        check_names_host(server, ca, host, certs.server_cert)


def check_names_host(cert: x509.Certificate, ca: x509.Certificate, host: str, path: Path) -> None:
    """``cert``, verified against ``ca``, must name ``host`` the way TLS clients match it (RFC 6125).

    The match is the verifier's: names compare case-insensitively, a wildcard covers exactly one leftmost label
    (``*.example.org`` names ``a.example.org``, not ``a.b.example.org`` nor ``example.org``), and an IP address
    matches only an IP address entry.
    """
    try:
        _server_verifier(ca, _subject(host)).verify(cert, [])
    except (ValueError, VerificationError):
        names = sorted(_named(cert))
        raise CertificateError(
            f"{path}: the certificate does not name {host!r} (it names {names}); "
            "re-create it with `fedtune certs init --san` including that name"
        ) from None


def tls_handshake(address: str, ca: Path, *, timeout: float = 5.0) -> str:
    """One TLS handshake with ``host:port``, verified against ``ca``; returns the TLS version negotiated.

    An unreachable server is an OSError (worth retrying); a certificate that does not verify, or a failed
    handshake, is a CertificateError (final).
    """
    host, port = _split_address(address)
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
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


def probe_tls(address: str, ca: Path, *, timeout: float = 60.0) -> str:
    """Connect to ``host:port`` and verify its certificate against ``ca``; return the TLS version negotiated.

    Waits up to ``timeout`` seconds for the server to accept connections; a certificate that does not verify is
    final (CertificateError), as is an unreachable server at the deadline (FederationError).
    """
    _split_address(address)  # a malformed address is an error at once, not after the wait
    try:
        return wait_until(lambda: tls_handshake(address, ca), timeout=timeout, interval=1.0, retry_on=(OSError,))
    except WaitTimeout as exc:
        raise FederationError(f"cannot reach the SuperLink at {address}: {exc.last_error}") from None


def _split_address(address: str) -> tuple[str, int]:
    host, _, port_text = address.rpartition(":")
    if not host or not port_text.isdigit():
        raise FederationError(f"SuperLink address must be HOST:PORT; got {address!r}")
    return host.strip("[]"), int(port_text)


def _check_chain(server: x509.Certificate, ca: x509.Certificate, certs: FederationCerts) -> None:
    """The server certificate must chain to the federation CA under the verifier's (Web PKI) profile.

    The verifier judges a chain for a name; with none given here, a name the certificate itself carries stands in,
    so that only the chain, validity and extensions are judged (whether it names the right host is checked apart).
    """
    names = sorted(_named(server))
    if not names:
        raise CertificateError(f"{certs.server_cert}: the certificate has no subject alternative names")
    stand_in = next((subject for name in names if (subject := _stand_in(name)) is not None), None)
    if stand_in is None:
        raise CertificateError(f"{certs.server_cert}: no subject alternative name is a DNS name or IP address {names}")
    try:
        _server_verifier(ca, stand_in).verify(server, [])
    except VerificationError as exc:
        reason = str(exc).partition(" (encountered processing")[0]
        raise CertificateError(
            f"{certs.server_cert}: not issued by the federation CA {certs.ca_cert} ({reason})"
        ) from None


def _server_verifier(ca: x509.Certificate, subject: Subject) -> ServerVerifier:
    return PolicyBuilder().store(Store([ca])).time(dt.datetime.now(dt.UTC)).build_server_verifier(subject)


def _subject(host: str) -> Subject:
    """What a TLS client verifies for ``host``: an IP address entry for an address, else a DNS name.

    A string that is neither (``bad_host``, a wildcard) is a ValueError.
    """
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _named(cert: x509.Certificate) -> set[str]:
    """The DNS names and IP addresses in the certificate's subject alternative names."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName)) | {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def _stand_in(name: str) -> Subject | None:
    """A host the SAN entry ``name`` names (a wildcard entry: one concrete label in its place); None if unusable."""
    try:
        return _subject(f"fedtune{name[1:]}" if name.startswith("*.") else name)
    except ValueError:
        return None
