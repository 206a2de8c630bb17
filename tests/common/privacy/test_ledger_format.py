"""Ledgers written before the ledger's restructuring still read, verify and account exactly as they did.

The files in data/ were written by the earlier code (see data/README.md); the expected figures were computed by that
code at the same time. The format may only evolve by adding: a file written before must keep verifying.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common.errors import LedgerError, LedgerTamperError
from common.privacy.audit import audit_ledger
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import DatasetRef, PrivacyLedger
from common.privacy.records import encode_record
from common.privacy.signing import parse_public_key
from common.privacy.storage import head_path, read_head, read_records

DATA_DIR = Path(__file__).parent / "data"
EXPECTED = json.loads((DATA_DIR / "legacy-expected.json").read_text())
AUDIT = json.loads((DATA_DIR / "legacy-audit.json").read_text())
NAMES = sorted(EXPECTED)


def copy(name: str, tmp_path: Path) -> Path:
    """The fixture ledger and its anchor, copied (reading must not depend on writing beside the fixtures)."""
    for source in (DATA_DIR / name, head_path(DATA_DIR / name)):
        shutil.copyfile(source, tmp_path / source.name)
    return tmp_path / name


def trusted_key(name: str):
    pub = DATA_DIR / f"{name}.pub"
    return parse_public_key(pub.read_text(), source=str(pub)) if pub.exists() else None


def test_both_fixtures_exist_and_one_is_signed():
    assert NAMES == ["legacy-signed.jsonl", "legacy-unsigned.jsonl"]
    assert trusted_key("legacy-signed.jsonl") is not None and trusted_key("legacy-unsigned.jsonl") is None


@pytest.mark.parametrize("name", NAMES)
def test_legacy_ledger_verifies_and_reports_the_same_spend(tmp_path, name):
    path = copy(name, tmp_path)
    expected = EXPECTED[name]
    snapshot = PrivacyLedger(path, trusted_public_key=trusted_key(name)).snapshot()
    assert (len(snapshot.records), len(snapshot.committed)) == (expected["records"], expected["committed"])
    assert snapshot.fingerprints() == list(expected["datasets"])
    for fingerprint, figures in expected["datasets"].items():
        status = PrivacyLedger(path).status(
            DatasetRef(fingerprint, "fixture", 10**6), delta=1e-3, accountant="rdp", limit=None
        )
        assert (status.delta, status.accountant, status.events) == (
            figures["delta"],
            figures["accountant"],
            figures["events"],
        )
        spent = PrivacyLedger(path).spent(fingerprint, delta=figures["delta"], accountant=figures["accountant"])
        if figures["epsilon"] is None:
            assert status.non_private and spent == float("inf")
        else:
            assert spent == pytest.approx(figures["epsilon"], rel=1e-9)
            assert status.spent == pytest.approx(figures["epsilon"], rel=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_legacy_ledger_audits_identically(tmp_path, name):
    path = copy(name, tmp_path)
    report = audit_ledger(path, verify=True, trusted_key=trusted_key(name), with_history=True).to_json()
    assert_same(report, {**AUDIT[name], "path": str(path)})


def assert_same(found, expected, where="report"):
    """Equal structure and values; floats (recomputed epsilons) equal up to rounding."""
    if isinstance(expected, dict):
        assert isinstance(found, dict) and sorted(found) == sorted(expected), where
        for key in expected:
            assert_same(found[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(found, list | tuple) and len(found) == len(expected), where
        for i, (a, b) in enumerate(zip(found, expected, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert found == pytest.approx(expected, rel=1e-9), where
    else:
        assert found == expected, where


@pytest.mark.parametrize("name", NAMES)
def test_parsing_and_re_encoding_reproduces_the_files_bytes(name):
    path = DATA_DIR / name
    assert "".join(encode_record(r) + "\n" for r in read_records(path)).encode() == path.read_bytes()
    head = read_head(path)
    assert head is not None and (head.model_dump_json() + "\n").encode() == head_path(path).read_bytes()


def test_new_code_appends_to_a_legacy_ledger(tmp_path):
    path = copy("legacy-unsigned.jsonl", tmp_path)
    old = path.read_bytes()
    fingerprint = next(iter(EXPECTED["legacy-unsigned.jsonl"]["datasets"]))
    ledger = PrivacyLedger(path)
    before = ledger.spent(fingerprint, delta=1e-5)
    event = DpSgdEvent(noise_multiplier=1.1, sample_rate=0.02, steps=50, max_grad_norm=1.0)
    reservation = ledger.reserve(
        dataset=DatasetRef(fingerprint, "site-a.jsonl", 5000), event=event, delta=1e-5, limit=8.0, run_id="new"
    )
    ledger.commit(reservation)
    assert path.read_bytes().startswith(old)  # append-only: not one earlier byte changed
    assert reservation.epsilon_before == pytest.approx(before, rel=1e-12)
    assert PrivacyLedger(path).spent(fingerprint, delta=1e-5) == pytest.approx(reservation.epsilon_after, rel=1e-12)
    assert reservation.epsilon_after > before


def test_legacy_signed_ledger_refuses_writes_without_its_key_and_detects_edits(tmp_path):
    path = copy("legacy-signed.jsonl", tmp_path)
    fingerprint = next(iter(EXPECTED["legacy-signed.jsonl"]["datasets"]))
    event = DpSgdEvent(noise_multiplier=1.1, sample_rate=0.02, steps=50, max_grad_norm=1.0)
    with pytest.raises(LedgerError, match="pass its signing key"):
        PrivacyLedger(path).reserve(
            dataset=DatasetRef(fingerprint, "site-a.jsonl", 5000), event=event, delta=1e-5, limit=8.0, run_id="x"
        )
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"steps":50', '"steps":5')
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(LedgerTamperError, match=r"legacy-signed.jsonl:2: reserve record seq 1 .* was edited"):
        PrivacyLedger(path).snapshot()
