"""Ledgers written before per-record budgets still read and verify byte for byte, and are accounted safely.

The files in data/ were written by earlier code (see data/README.md), with the figures it reported. Their events name
a dataset by its v1 content fingerprint, not the records it held, so the per-record ledger charges each of them to
EVERY record until the dataset is seen again and attributed (never less than they may have touched). The figures
each dataset's own events cost (what the old code reported) stay visible in the audit as ``own_epsilon``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from common.errors import BudgetExhaustedError, LedgerError, LedgerTamperError
from common.privacy.accountant import get_accountant
from common.privacy.audit import audit_ledger
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import DatasetRef, LegacySource, PrivacyLedger
from common.privacy.records import AttributeRecord, UpgradeRecord, encode_record
from common.privacy.signing import parse_public_key
from common.privacy.storage import head_path, read_head, read_records
from tests.helpers import synthetic_dataset

DATA_DIR = Path(__file__).parent / "data"
EXPECTED = json.loads((DATA_DIR / "legacy-expected.json").read_text())
AUDIT = json.loads((DATA_DIR / "legacy-audit.json").read_text())
NAMES = sorted(EXPECTED)
A, B, C = (
    next(f for f in EXPECTED["legacy-unsigned.jsonl"]["datasets"] if f.startswith(p)) for p in ("a1", "b2", "c3")
)
EVENT = DpSgdEvent(noise_multiplier=1.1, sample_rate=0.02, steps=50, max_grad_norm=1.0)


def copy(name: str, tmp_path: Path) -> Path:
    """The fixture ledger and its anchor, copied (reading must not depend on writing beside the fixtures)."""
    for source in (DATA_DIR / name, head_path(DATA_DIR / name)):
        shutil.copyfile(source, tmp_path / source.name)
    return tmp_path / name


def trusted_key(name: str):
    pub = DATA_DIR / f"{name}.pub"
    return parse_public_key(pub.read_text(), source=str(pub)) if pub.exists() else None


def legacy(name: str, fingerprint: str, records: int = 5000, tag: str | None = None) -> DatasetRef:
    """The records of the dataset a legacy fingerprint stood for (synthetic: the fixtures' datasets were too)."""
    synthetic = synthetic_dataset(name, records, tag=tag or fingerprint[:2])
    return DatasetRef(synthetic.dataset_id, synthetic.records, LegacySource(fingerprint, synthetic.records))


def test_both_fixtures_exist_and_one_is_signed():
    assert NAMES == ["legacy-signed.jsonl", "legacy-unsigned.jsonl"]
    assert trusted_key("legacy-signed.jsonl") is not None and trusted_key("legacy-unsigned.jsonl") is None


@pytest.mark.parametrize("name", NAMES)
def test_legacy_ledger_verifies_and_each_datasets_own_figures_are_unchanged(tmp_path, name):
    path = copy(name, tmp_path)
    expected = EXPECTED[name]
    snapshot = PrivacyLedger(path, trusted_public_key=trusted_key(name)).snapshot()
    assert (len(snapshot.records), len(snapshot.committed)) == (expected["records"], expected["committed"])
    assert snapshot.fingerprints() == list(expected["datasets"]) and snapshot.upgrade is None
    report = audit_ledger(path, verify=True, trusted_key=trusted_key(name), with_history=True)
    assert not report.per_record and report.legacy_unattributed == sum(
        f["events"] for f in expected["datasets"].values()
    )
    old = {d["fingerprint"]: d for d in AUDIT[name]["datasets"]}
    for dataset in report.datasets:
        figures = expected["datasets"][dataset.fingerprint]
        assert dataset.kind == "legacy" and dataset.events == figures["events"]
        if figures["epsilon"] is None:
            assert math.isinf(dataset.own_epsilon)
        else:
            assert dataset.own_epsilon == pytest.approx(figures["epsilon"], rel=1e-9)
        assert [asdict_row(r) for r in dataset.event_rows] == old[dataset.fingerprint]["events_detail"]
        assert (dataset.committed, dataset.pending) == (
            old[dataset.fingerprint]["committed"],
            old[dataset.fingerprint]["pending"],
        )
        # Every record carries every unattributed legacy event, one of which trained without privacy.
        assert math.isinf(dataset.epsilon) and dataset.non_private


def asdict_row(row) -> dict:
    from dataclasses import asdict

    return asdict(row)


@pytest.mark.parametrize("name", NAMES)
def test_parsing_and_re_encoding_reproduces_the_files_bytes(name):
    path = DATA_DIR / name
    assert "".join(encode_record(r) + "\n" for r in read_records(path)).encode() == path.read_bytes()
    head = read_head(path)
    assert head is not None and (head.model_dump_json() + "\n").encode() == head_path(path).read_bytes()


def test_unattributed_legacy_events_count_against_every_record_until_attributed(tmp_path):
    path = copy("legacy-unsigned.jsonl", tmp_path)
    old = path.read_bytes()
    ledger = PrivacyLedger(path)
    newcomer = synthetic_dataset("new.jsonl", 5000, tag="new")
    with pytest.raises(BudgetExhaustedError, match="without privacy"):  # the legacy baseline may have held them
        ledger.check_trainable(newcomer, delta=1e-5, limit=8.0)
    # The non-private baseline's data is seen again: its events move to its own records.
    assert ledger.attribute(legacy("baseline.jsonl", C)) and not ledger.attribute(legacy("baseline.jsonl", C))
    assert path.read_bytes().startswith(old)  # append-only: not one earlier byte changed
    records = read_records(path)
    assert isinstance(records[len(old.splitlines())], UpgradeRecord)
    assert [r.legacy_fingerprint for r in records if isinstance(r, AttributeRecord)] == [C]
    with pytest.raises(BudgetExhaustedError, match="without privacy"):
        ledger.check_trainable(legacy("baseline.jsonl", C), delta=1e-5, limit=None)
    # The newcomer now carries the still-unattributed private legacy events (a1 and b2), composed at the ledger's
    # accounting (its first event's: PRV at 1e-5); training it reserves on top of them.
    legacy_events = [
        r.dp_event() for r in PrivacyLedger(path).snapshot().reservations() if r.dataset_fingerprint in (A, B)
    ]
    carried = get_accountant("prv").epsilon(legacy_events, delta=1e-5)
    assert ledger.spent(newcomer, delta=1e-5) == pytest.approx(carried, rel=1e-9)
    reservation = ledger.reserve(dataset=newcomer, event=EVENT, delta=1e-5, limit=8.0, run_id="new")
    assert reservation.epsilon_before == pytest.approx(carried, rel=1e-9)
    assert reservation.epsilon_after == pytest.approx(
        get_accountant("prv").epsilon([*legacy_events, EVENT], delta=1e-5), rel=1e-9
    )


def test_training_the_legacy_dataset_again_attributes_its_events(tmp_path):
    path = copy("legacy-unsigned.jsonl", tmp_path)
    ledger = PrivacyLedger(path)
    ledger.attribute(legacy("baseline.jsonl", C))
    site_a = legacy("site-a.jsonl", A)
    a_events = [r.dp_event() for r in ledger.snapshot().reservations() if r.dataset_fingerprint == A]
    b_events = [r.dp_event() for r in ledger.snapshot().reservations() if r.dataset_fingerprint == B]
    reservation = ledger.reserve(dataset=site_a, event=EVENT, delta=1e-5, limit=20.0, run_id="again")
    accountant = get_accountant("prv")
    assert reservation.epsilon_before == pytest.approx(accountant.epsilon([*a_events, *b_events], delta=1e-5), rel=1e-9)
    # site-a's events now follow its records: a disjoint dataset carries only b2's (still unattributed) events.
    other = synthetic_dataset("other.jsonl", 5000, tag="other")
    assert PrivacyLedger(path).spent(other, delta=1e-5) == pytest.approx(accountant.epsilon(b_events, delta=1e-5))


def test_legacy_signed_ledger_refuses_writes_without_its_key_and_detects_edits(tmp_path):
    path = copy("legacy-signed.jsonl", tmp_path)
    with pytest.raises(LedgerError, match="pass its signing key"):
        PrivacyLedger(path).attribute(legacy("baseline.jsonl", C))
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"steps":50', '"steps":5')
    path.write_text("".join(line + "\n" for line in lines))
    with pytest.raises(LedgerTamperError, match=r"legacy-signed.jsonl:2: reserve record seq 1 .* was edited"):
        PrivacyLedger(path).snapshot()
