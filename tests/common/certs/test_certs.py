"""Certificates and keys: created right (0600, never overwritten), and every bad file caught before use."""

from __future__ import annotations

import datetime as dt
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.certs.authority import FederationCerts, init_federation
from common.certs.checks import check_server_certs, probe_tls
from common.certs.node_keys import create_node_key, load_node_private_key, load_node_public_key
from common.errors import CertificateError


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
    with pytest.raises(CertificateError, match=r"does not name 'fed\.example\.org'"):
        check_server_certs(certs, host="fed.example.org")


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
    with pytest.raises(CertificateError, match="not issued by the federation CA"):
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
