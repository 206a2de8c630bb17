"""``fedtune audit`` on a known ledger: table values, JSON schema, plot, --verify."""

from __future__ import annotations

import json

import pytest

from common.privacy.accountant import PrvAccountant
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import PrivacyLedger
from common.privacy.signing import generate_signing_key, load_signing_key
from tests.helpers import run_cli, synthetic_dataset

A = synthetic_dataset("hospital-a.jsonl", 5000, tag="a")
B = synthetic_dataset("hospital-b.jsonl", 5000, tag="b")
SHARED = synthetic_dataset("a-and-b.jsonl", 200, tag="a", start=4900)  # 100 of A's records and 100 new ones
EVENT = DpSgdEvent(noise_multiplier=1.1, sample_rate=0.02, steps=100, max_grad_norm=1.0)


@pytest.fixture
def known_ledger(tmp_path):
    path = tmp_path / "site.jsonl"
    ledger = PrivacyLedger(path)
    for run in ("run-1", "run-2"):
        for rnd in range(2):
            ledger.commit(ledger.reserve(dataset=A, event=EVENT, delta=1e-5, limit=6.0, run_id=run, round=rnd))
    ledger.reserve(dataset=B, event=EVENT, delta=1e-5, limit=3.0, run_id="run-3", round=0)  # never committed
    return path


def test_json_report(known_ledger, capsys):
    assert run_cli(["audit", str(known_ledger), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["schema"] == "fedtune-audit/2"
    (ledger,) = report["ledgers"]
    assert ledger["verified"] is False and ledger["signed"] is False and ledger["records"] == 13
    assert ledger["per_record"] and (ledger["delta"], ledger["accountant"]) == (1e-5, "prv")
    a, b = ledger["datasets"]
    expected_a = PrvAccountant().epsilon([EVENT] * 4, delta=1e-5)
    assert a["dataset_id"] == "hospital-a.jsonl" and a["fingerprint"] == A.fingerprint and a["records"] == 5000
    assert a["epsilon"] == pytest.approx(expected_a) and a["limit"] == 6.0
    assert a["remaining"] == pytest.approx(6.0 - expected_a)
    assert (a["events"], a["committed"], a["pending"], a["runs"], a["rounds"]) == (4, 4, 0, 2, 4)
    assert b["pending"] == 1 and b["epsilon"] == pytest.approx(PrvAccountant().epsilon([EVENT], delta=1e-5))
    assert [e["status"] for e in b["events_detail"]] == ["reserved"]
    # Exposure classes: A's 5000 records share one history, B's another.
    assert sorted((c["records"], c["events"]) for c in ledger["classes"]) == [(5000, 1), (5000, 4)]
    assert set(a["events_detail"][0]) >= {
        "seq",
        "event_id",
        "run_id",
        "round",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "max_grad_norm",
        "status",
        "created_at",
    }


def test_table_and_plot(known_ledger, tmp_path, capsys):
    plot = tmp_path / "spend.png"
    assert run_cli(["audit", str(known_ledger), "--verify", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    expected_a = PrvAccountant().epsilon([EVENT] * 4, delta=1e-5)
    assert "hospital-a.jsonl" in out and f"{expected_a:.4g}" in out and "verified: 13 records" in out
    assert "exposure classes" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verify_names_the_first_bad_event(known_ledger, capsys):
    lines = known_ledger.read_text().splitlines()
    lines[5] = lines[5].replace('"steps":100', '"steps":1')
    known_ledger.write_text("\n".join(lines) + "\n")
    assert run_cli(["audit", str(known_ledger)]) == 0  # parsing alone does not check integrity
    assert "NOT checked" in capsys.readouterr().out
    assert run_cli(["audit", str(known_ledger), "--verify"]) == 4
    err = capsys.readouterr().err
    assert "site.jsonl:6:" in err and "reserve record seq 5" in err and "edited" in err


def test_truncated_ledger_is_an_error_even_without_verify(known_ledger, capsys):
    known_ledger.write_bytes(known_ledger.read_bytes()[:-10])
    assert run_cli(["audit", str(known_ledger)]) == 4
    assert "truncated last line" in capsys.readouterr().err


def test_missing_ledger(tmp_path, capsys):
    assert run_cli(["audit", str(tmp_path / "nope.jsonl")]) == 4
    assert "no such ledger file" in capsys.readouterr().err


def test_signed_ledger_with_pinned_key(tmp_path, capsys):
    assert run_cli(["ledger-key", "--out", str(tmp_path / "site.key")]) == 0
    assert "BEGIN" not in capsys.readouterr().out, "a private key must never be printed"
    assert oct((tmp_path / "site.key").stat().st_mode & 0o777) == "0o600"
    path = tmp_path / "l.jsonl"
    ledger = PrivacyLedger(path, signing_key=load_signing_key(tmp_path / "site.key"))
    ledger.commit(ledger.reserve(dataset=A, event=EVENT, delta=1e-5, limit=6.0, run_id="r"))
    assert run_cli(["audit", str(path), "--public-key", str(tmp_path / "site.key.pub")]) == 0
    assert "every signature valid" in capsys.readouterr().out
    generate_signing_key(tmp_path / "other.key")
    assert run_cli(["audit", str(path), "--public-key", str(tmp_path / "other.key.pub")]) == 4
    assert "different signing key" in capsys.readouterr().err


def test_overlapping_datasets_show_the_most_exposed_record(tmp_path, capsys):
    path = tmp_path / "l.jsonl"
    ledger = PrivacyLedger(path)
    ledger.commit(ledger.reserve(dataset=A, event=EVENT, delta=1e-5, limit=6.0, run_id="r1"))
    ledger.commit(ledger.reserve(dataset=SHARED, event=EVENT, delta=1e-5, limit=6.0, run_id="r2"))
    assert run_cli(["audit", str(path), "--json"]) == 0
    (report,) = json.loads(capsys.readouterr().out)["ledgers"]
    a, shared = report["datasets"]
    twice = PrvAccountant().epsilon([EVENT] * 2, delta=1e-5)
    assert a["epsilon"] == pytest.approx(twice) and shared["epsilon"] == pytest.approx(twice)  # the 100 overlap
    assert sorted((c["records"], c["events"]) for c in report["classes"]) == [(100, 1), (100, 2), (4900, 1)]


def test_witness_cross_check(known_ledger, tmp_path, capsys):
    head = PrivacyLedger(known_ledger).head()
    report = tmp_path / "privacy_report.json"
    entry = {"site": "hospital-a", "round": 2, "ledger_id": head.ledger_id, "seq": head.seq, "hash": head.hash}
    report.write_text(json.dumps({"witnesses": [entry]}))
    assert run_cli(["audit", str(known_ledger), "--witness", str(report)]) == 0
    assert "every witnessed head is in the ledger: hospital-a round 2" in capsys.readouterr().out
    report.write_text(json.dumps({"witnesses": [{**entry, "seq": head.seq + 2}]}))  # the server saw more
    assert run_cli(["audit", str(known_ledger), "--witness", str(report)]) == 4
    assert "no longer contains" in capsys.readouterr().err


def legacy_ledger(path, fingerprint: str, event: DpSgdEvent) -> None:
    """A ledger as the code before per-record budgets wrote it: a reserve naming only a file's v1 fingerprint."""
    from common.privacy.chain import GENESIS_HASH
    from common.privacy.records import ReserveRecord, timestamp
    from common.privacy.storage import LedgerFile, LedgerSnapshot

    record = ReserveRecord(
        seq=0,
        prev_hash=GENESIS_HASH,
        created_at=timestamp(),
        event_id="legacy-1",
        dataset_id="old.jsonl",
        dataset_fingerprint=fingerprint,
        run_id="old-run",
        round=0,
        mechanism="dpsgd-poisson-gaussian/add-remove",
        delta=1e-5,
        accountant="prv",
        **event.model_dump(),
    )
    LedgerFile(path, signing_key=None, lock_timeout=5).append(LedgerSnapshot(path=path), record)


def test_ledger_attribute_moves_legacy_events_onto_the_files_records(tmp_path, sample_jsonl, capsys):
    from common.data.readers import read_labeled_file

    path = tmp_path / "l.jsonl"
    legacy_ledger(path, read_labeled_file(sample_jsonl).fingerprint, EVENT)
    unrelated = synthetic_dataset("unrelated.jsonl", 500, tag="u")
    charged = PrvAccountant().epsilon([EVENT], delta=1e-5)
    assert PrivacyLedger(path).spent(unrelated, delta=1e-5) == pytest.approx(charged)  # every record, for now
    assert run_cli(["ledger-attribute", "--ledger", str(path), "--data", str(sample_jsonl)]) == 0
    assert "now count against its records" in capsys.readouterr().out
    assert PrivacyLedger(path).spent(unrelated, delta=1e-5) == 0.0
    records = PrivacyLedger(path).dataset(read_labeled_file(sample_jsonl).texts, dataset_id="again")
    assert PrivacyLedger(path).spent(records, delta=1e-5) == pytest.approx(charged)
    assert run_cli(["ledger-attribute", "--ledger", str(path), "--data", str(sample_jsonl)]) == 0
    assert "no unattributed legacy events" in capsys.readouterr().out
