"""Certificates and keys: created right (0600, never overwritten), and every bad file caught before use."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.certs.authority import FederationCerts, init_federation
from common.certs.checks import check_server_certs, probe_tls
from common.certs.node_keys import create_node_key, load_node_private_key, load_node_public_key
from common.errors import CertificateError, FederationError


@pytest.fixture
def certs(tmp_path):
    return init_federation(tmp_path / "certs", sans=("localhost", "127.0.0.1", "superlink"))


def mode(path):
    return path.stat().st_mode & 0o777


def test_init_writes_keys_0600_and_valid_certs(certs):
    assert mode(certs.ca_key) == 0o600 and mode(certs.server_key) == 0o600
    assert mode(certs.ca_cert) == 0o644
    check_server_certs(certs, host="127.0.0.1")
    check_server_certs(certs, host="superlink")
    with pytest.raises(CertificateError, match="refusing to overwrite"):
        init_federation(certs.directory)


def test_host_must_be_named(certs):
    with pytest.raises(CertificateError, match=r"does not name 'fed\.example\.org' \(it names \['127\.0\.0\.1'"):
        check_server_certs(certs, host="fed.example.org")


def reissue(certs, *names):
    """Replace the server certificate with one the federation CA issues for ``names`` (same key, same profile)."""
    ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    now = dt.datetime.now(dt.UTC)
    sans = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in names]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    certs.server_cert.unlink()
    certs.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.mark.parametrize(
    ("host", "named"),
    [
        ("a.example.org", True),
        ("A.EXAMPLE.ORG", True),  # DNS names compare case-insensitively
        ("a.b.example.org", False),  # a wildcard covers exactly one label
        ("example.org", False),  # ... and not the bare domain
        ("a.example.org.evil.net", False),
        ("evil-example.org", False),
    ],
)
def test_wildcard_names_match_one_label_in_any_case(certs, host, named):
    reissue(certs, "*.example.org")
    if named:
        check_server_certs(certs, host=host)
    else:
        with pytest.raises(CertificateError, match=r"does not name .*it names \['\*\.example\.org'\]"):
            check_server_certs(certs, host=host)


def test_a_name_given_in_capitals_matches(certs):
    reissue(certs, "Fed.Example.ORG")
    check_server_certs(certs, host="fed.example.org")
    check_server_certs(certs, host="FED.EXAMPLE.ORG")


@pytest.mark.parametrize(("host", "named"), [("10.0.0.7", True), ("10.0.0.8", False), ("::1", False)])
def test_an_ip_address_entry_names_only_that_address(certs, host, named):
    reissue(certs, "10.0.0.7", "fed.example.org")
    if named:
        check_server_certs(certs, host=host)
    else:
        with pytest.raises(CertificateError, match="does not name"):
            check_server_certs(certs, host=host)


def test_a_dns_name_does_not_name_an_address_and_a_wildcard_bind_names_no_host(certs):
    reissue(certs, "fed.example.org")
    with pytest.raises(CertificateError, match=r"does not name '127\.0\.0\.1'"):
        check_server_certs(certs, host="127.0.0.1")
    check_server_certs(certs, host="0.0.0.0")  # listening everywhere: no single name to check
    with pytest.raises(CertificateError, match="does not name 'not_a_host'"):
        check_server_certs(certs, host="not_a_host")


def test_mismatched_key(certs, tmp_path):
    other = init_federation(tmp_path / "other")
    certs.server_key.unlink()
    certs.server_key.write_bytes(other.server_key.read_bytes())
    certs.server_key.chmod(0o600)
    with pytest.raises(CertificateError, match="does not match"):
        check_server_certs(certs)


def test_server_cert_from_another_ca(certs, tmp_path):
    other = init_federation(tmp_path / "other")
    certs.ca_cert.unlink()
    certs.ca_cert.write_bytes(other.ca_cert.read_bytes())
    with pytest.raises(CertificateError, match=r"server\.pem: not issued by the federation CA .*ca\.pem"):
        check_server_certs(certs)


def test_a_certificate_without_names(certs):
    ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    now = dt.datetime.now(dt.UTC)
    nameless = (
        x509.CertificateBuilder()
        .subject_name(ca.subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    certs.server_cert.unlink()
    certs.server_cert.write_bytes(nameless.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CertificateError, match=r"server\.pem: the certificate has no subject alternative names"):
        check_server_certs(certs)


def test_expired_certificate(certs):
    ca_key = serialization.load_pem_private_key(certs.ca_key.read_bytes(), password=None)
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(certs.server_key.read_bytes(), password=None)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    expired = (
        x509.CertificateBuilder()
        .subject_name(ca.subject)
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(past - dt.timedelta(days=1))
        .not_valid_after(past)
        .sign(ca_key, hashes.SHA256())
    )
    certs.server_cert.unlink()
    certs.server_cert.write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CertificateError, match="expired on"):
        check_server_certs(certs)


def test_unreadable_or_exposed_files(certs):
    certs.server_key.chmod(0o644)
    with pytest.raises(CertificateError, match="readable by others"):
        check_server_certs(certs)
    certs.server_cert.write_text("not a certificate")
    with pytest.raises(CertificateError, match="not a PEM certificate"):
        check_server_certs(certs)
    certs.ca_cert.unlink()
    with pytest.raises(CertificateError, match="cannot read the CA certificate"):
        check_server_certs(FederationCerts(certs.directory))


def test_node_keys_are_openssh_ecdsa(tmp_path):
    private, public = create_node_key(tmp_path, "site-a")
    assert mode(private) == 0o600
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert isinstance(load_node_private_key(private), ec.EllipticCurvePrivateKey)
    assert isinstance(load_node_public_key(public), ec.EllipticCurvePublicKey)
    with pytest.raises(CertificateError, match="refusing to overwrite"):
        create_node_key(tmp_path, "site-a")
    with pytest.raises(CertificateError, match="site name"):
        create_node_key(tmp_path, "bad name!")
    private.chmod(0o644)
    with pytest.raises(CertificateError, match="readable by others"):
        load_node_private_key(private)
    with pytest.raises(CertificateError, match="not an OpenSSH public key"):
        load_node_public_key(private)


def _tls_server(certs):
    import socket

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        for _ in range(2):
            connection, _ = listener.accept()
            try:
                with context.wrap_socket(connection, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    threading.Thread(target=serve, daemon=True).start()
    return listener, port


def test_probe_verifies_the_live_server_against_the_ca(certs, tmp_path):
    listener, port = _tls_server(certs)
    try:
        assert probe_tls(f"127.0.0.1:{port}", certs.ca_cert, timeout=5) == "TLSv1.3"
        wrong = init_federation(tmp_path / "wrong")
        with pytest.raises(CertificateError, match="does not verify against"):
            probe_tls(f"127.0.0.1:{port}", wrong.ca_cert, timeout=5)
    finally:
        listener.close()


def test_probe_gives_up_on_an_unreachable_server_at_its_deadline(certs):
    with pytest.raises(FederationError, match=r"cannot reach the SuperLink at 127\.0\.0\.1:1: .*refused"):
        probe_tls("127.0.0.1:1", certs.ca_cert, timeout=1)
    with pytest.raises(FederationError, match="must be HOST:PORT"):
        probe_tls("no-port", certs.ca_cert, timeout=60)  # malformed: refused at once, not after the wait
