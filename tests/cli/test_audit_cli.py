"""``fedtune audit`` on a known ledger: table values, JSON schema, plot, --verify."""

from __future__ import annotations

import json

import pytest

from cli.app import main
from common.privacy.accountant import PrvAccountant
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import DatasetRef, PrivacyLedger
from common.privacy.signing import generate_signing_key, load_signing_key

A = DatasetRef(fingerprint="a" * 64, dataset_id="hospital-a.jsonl", num_examples=5000)
B = DatasetRef(fingerprint="b" * 64, dataset_id="hospital-b.jsonl", num_examples=5000)
EVENT = DpSgdEvent(noise_multiplier=1.1, sample_rate=0.02, steps=100, max_grad_norm=1.0)


def run_cli(args):
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


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
    assert report["schema"] == "fedtune-audit/1"
    (ledger,) = report["ledgers"]
    assert ledger["verified"] is False and ledger["signed"] is False and ledger["records"] == 10
    a, b = ledger["datasets"]
    expected_a = PrvAccountant().epsilon([EVENT] * 4, delta=1e-5)
    assert a["dataset_id"] == "hospital-a.jsonl" and a["fingerprint"] == "a" * 64
    assert a["epsilon"] == pytest.approx(expected_a) and a["limit"] == 6.0
    assert a["remaining"] == pytest.approx(6.0 - expected_a)
    assert (a["events"], a["committed"], a["pending"], a["runs"], a["rounds"]) == (4, 4, 0, 2, 4)
    assert b["pending"] == 1 and b["epsilon"] == pytest.approx(PrvAccountant().epsilon([EVENT], delta=1e-5))
    assert [e["status"] for e in b["events_detail"]] == ["reserved"]
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
    assert "hospital-a.jsonl" in out and f"{expected_a:.4g}" in out and "verified: 10 records" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verify_names_the_first_bad_event(known_ledger, capsys):
    lines = known_ledger.read_text().splitlines()
    lines[3] = lines[3].replace('"steps":100', '"steps":1')
    known_ledger.write_text("\n".join(lines) + "\n")
    assert run_cli(["audit", str(known_ledger)]) == 0  # parsing alone does not check integrity
    assert "NOT checked" in capsys.readouterr().out
    assert run_cli(["audit", str(known_ledger), "--verify"]) == 4
    err = capsys.readouterr().err
    assert "site.jsonl:4:" in err and "reserve record seq 3" in err and "edited" in err


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
