"""The identity table: enrolled keys named by the operator, simulated nodes by the site table, nothing by a reply."""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from common.certs.node_keys import create_node_key
from common.errors import CertificateError, ConfigError, FederationError
from server.identities import (
    IdentityTable,
    SiteIdentity,
    SiteKey,
    check_site_keys,
    enrol_sites,
    key_fingerprint,
    register_simulated_node,
)


@pytest.fixture
def keys(tmp_path):
    return [create_node_key(tmp_path / "keys", name)[1] for name in ("a", "b", "c")]


def test_an_enrolment_is_named_by_the_operator_or_after_the_key_file():
    assert SiteKey.parse("hospital-a=/keys/a.pub") == SiteKey("hospital-a", Path("/keys/a.pub"))
    assert SiteKey.parse("/keys/site-b.pub").name == "site-b"
    with pytest.raises(ConfigError, match="a site name is letters"):
        SiteKey.parse("node 1=/keys/a.pub")


def test_the_fingerprint_is_openssh_s(keys):
    blob = base64.b64decode(keys[0].read_text().split()[1])
    assert key_fingerprint(keys[0]) == "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    if shutil.which("ssh-keygen"):
        printed = subprocess.run(["ssh-keygen", "-lf", str(keys[0])], capture_output=True, text=True).stdout
        assert key_fingerprint(keys[0]) in printed


def test_enrolment_refuses_a_name_or_a_key_given_twice_and_a_bad_key(keys, tmp_path):
    check_site_keys([SiteKey("a", keys[0]), SiteKey("b", keys[1])])
    with pytest.raises(ConfigError, match="the name 'a' is given to"):
        check_site_keys([SiteKey("a", keys[0]), SiteKey("a", keys[1])])
    with pytest.raises(ConfigError, match="already enrolled as 'a'"):
        check_site_keys([SiteKey("a", keys[0]), SiteKey("b", keys[0])])
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-rsa AAAA nonsense\n")
    with pytest.raises(CertificateError, match=r"bad\.pub"):
        check_site_keys([SiteKey("x", bad)])


def test_enrol_sites_records_each_node_id_and_keeps_identities_across_a_restart(keys, tmp_path):
    table = IdentityTable(tmp_path / "run")
    answers = iter([1001, 1002, 1003])
    calls = []

    def register(key, name):
        calls.append((key, name))
        return next(answers)

    sites = [SiteKey(n, k) for n, k in zip(("hospital-a", "hospital-b", "hospital-c"), keys, strict=True)]
    enrolled = enrol_sites(sites, register, table)
    assert [(e.node_id, e.name, e.source) for e in enrolled] == [
        (1001, "hospital-a", "enrolled"),
        (1002, "hospital-b", "enrolled"),
        (1003, "hospital-c", "enrolled"),
    ]
    assert calls == [(k, n) for n, k in ((s.name, s.public_key) for s in sites)]
    known = table.read()
    assert known.of(1002) == SiteIdentity(1002, "hospital-b", key_fingerprint(keys[1]), "enrolled")
    assert known.of(7).name == "node 7" and known.of(7).label == "node 7"
    # A restarted server: the SuperLink already knows every key; the table still names them.
    assert enrol_sites(sites, lambda key, name: None, table) == enrolled
    with pytest.raises(FederationError, match="enrol it under that name"):
        enrol_sites([SiteKey("renamed", keys[0])], lambda key, name: None, table)
    # A new SuperLink state: the same key gets a new node id and keeps its name.
    enrol_sites(sites[:1], lambda key, name: 2001, table)
    assert table.read().of(2001).name == "hospital-a" and table.read().of(1001).name == "node 1001"


def test_a_name_a_node_and_a_key_each_have_one_meaning(keys, tmp_path):
    table = IdentityTable(tmp_path)
    fingerprint = key_fingerprint(keys[0])
    table.register(SiteIdentity(5, "a", fingerprint, "enrolled"))
    table.register(SiteIdentity(5, "a", fingerprint, "enrolled"))  # the same again: nothing changes
    for conflict, rule in (
        (SiteIdentity(5, "b", None, "simulation"), "node 5 is already registered as 'a'"),
        (SiteIdentity(6, "a", None, "simulation"), "the name 'a' already belongs to node 5"),
        (SiteIdentity(6, "b", fingerprint, "enrolled"), "already enrolled as 'a'"),
        (SiteIdentity(6, "no spaces allowed", None, "simulation"), "is not a site name"),
    ):
        with pytest.raises(FederationError, match=rule):
            table.register(conflict)


def test_simulated_nodes_register_their_site_names_and_a_new_simulation_forgets_them(tmp_path):
    register_simulated_node(tmp_path, 77, "site-0")
    register_simulated_node(tmp_path, 77, "site-0")
    assert IdentityTable(tmp_path).read().of(77) == SiteIdentity(77, "site-0", None, "simulation")
    IdentityTable(tmp_path).forget("simulation")
    register_simulated_node(tmp_path, 78, "site-0")  # the resumed simulation's new node id
    assert IdentityTable(tmp_path).read().of(78).name == "site-0"


def test_an_unreadable_table_is_a_clear_error(tmp_path):
    (tmp_path / "identities.json").write_text('{"sites": [{"node_id": "x"}]}')
    with pytest.raises(FederationError, match="unreadable identity table"):
        IdentityTable(tmp_path).read()
