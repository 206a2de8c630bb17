"""The server's preflight: nothing starts without valid certificates and enrolled, well-formed site keys."""

from __future__ import annotations

import pytest

from common.certs.authority import init_federation
from common.certs.node_keys import create_node_key
from common.errors import CertificateError, ConfigError
from common.federation.config import FederationConfig
from server.deploy import ServerLaunch, preflight, superlink_command


@pytest.fixture
def setup(tmp_path):
    certs = init_federation(tmp_path / "certs")
    _, pub_a = create_node_key(tmp_path / "keys", "a")
    _, pub_b = create_node_key(tmp_path / "keys", "b")
    config = FederationConfig(labels=("n", "p"), out_dir=str(tmp_path / "run"))
    return certs, (pub_a, pub_b), config


def test_valid_setup_passes_and_enables_tls_and_node_auth(setup, tmp_path):
    certs, keys, config = setup
    launch = ServerLaunch(out=tmp_path / "run", certs=certs.directory, enroll=keys)
    preflight(launch, config)
    command = superlink_command(launch)
    assert "--enable-supernode-auth" in command and "--ssl-certfile" in command and "--insecure" not in command
    assert "--disable-runtime-dependency-installation" in command


def test_tls_is_the_default(setup, tmp_path):
    _, keys, config = setup
    with pytest.raises(ConfigError, match="TLS is on by default"):
        preflight(ServerLaunch(out=tmp_path / "run", certs=None, enroll=keys), config)


def test_insecure_cannot_enroll(setup, tmp_path):
    _, keys, config = setup
    with pytest.raises(ConfigError, match="--enroll needs TLS"):
        preflight(ServerLaunch(out=tmp_path / "run", certs=None, enroll=keys, insecure=True), config)


def test_bad_enrolled_key_and_too_few_sites(setup, tmp_path):
    certs, keys, config = setup
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-rsa AAAA nonsense\n")
    with pytest.raises(CertificateError, match=r"bad\.pub"):
        preflight(ServerLaunch(out=tmp_path / "run", certs=certs.directory, enroll=(keys[0], bad)), config)
    with pytest.raises(ConfigError, match="cannot satisfy --min-sites 2"):
        preflight(ServerLaunch(out=tmp_path / "run", certs=certs.directory, enroll=keys[:1]), config)


def test_certificate_problems_stop_the_start(setup, tmp_path):
    certs, keys, config = setup
    certs.server_key.chmod(0o644)
    with pytest.raises(CertificateError, match="readable by others"):
        preflight(ServerLaunch(out=tmp_path / "run", certs=certs.directory, enroll=keys), config)
