"""The ledger's promises: composition across rounds and runs, check before spend, write ahead, fail closed."""

from __future__ import annotations

import json
import math

import pytest

from common.errors import BudgetExhaustedError, LedgerCorruptError, LedgerError, PrivacyParameterError
from common.privacy.accountant import PrvAccountant
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import PrivacyLedger
from common.privacy.signing import generate_signing_key, load_signing_key
from common.privacy.storage import head_path
from tests.helpers import synthetic_dataset

DATA = synthetic_dataset("site-a.jsonl", 10_000, tag="a")
OTHER = synthetic_dataset("site-b.jsonl", 10_000, tag="b")


def ev(sigma: float = 1.0, q: float = 0.02, steps: int = 100) -> DpSgdEvent:
    return DpSgdEvent(noise_multiplier=sigma, sample_rate=q, steps=steps, max_grad_norm=1.0)


def spend(ledger: PrivacyLedger, event: DpSgdEvent | None = None, *, dataset=DATA, limit=10.0, run="run-1", rnd=0):
    reservation = ledger.reserve(dataset=dataset, event=event or ev(), delta=1e-5, limit=limit, run_id=run, round=rnd)
    ledger.commit(reservation, examples_seen=200)
    return reservation


def test_composition_across_rounds_and_runs_equals_one_accountant(tmp_path):
    path = tmp_path / "ledger.jsonl"
    events = [ev(1.0, 0.02, 100), ev(1.2, 0.02, 100), ev(0.9, 0.05, 40), ev(1.0, 0.02, 100)]
    for i, event in enumerate(events[:2]):
        spend(PrivacyLedger(path), event, run="run-1", rnd=i)
    for i, event in enumerate(events[2:]):  # a new run, new ledger objects: nothing resets
        spend(PrivacyLedger(path), event, run="run-2", rnd=i)
    spend(PrivacyLedger(path), ev(3.0), dataset=OTHER)  # another dataset does not count
    expected = PrvAccountant().epsilon(events, delta=1e-5)
    assert PrivacyLedger(path).spent(DATA, delta=1e-5) == pytest.approx(expected, rel=1e-9)
    snapshot = PrivacyLedger(path).snapshot()
    assert len(snapshot.reservations(DATA.fingerprint)) == 4
    assert len(snapshot.committed) == 5


def test_reserve_reports_before_and_after(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    first = spend(ledger)
    second = ledger.reserve(dataset=DATA, event=ev(), delta=1e-5, limit=10.0, run_id="r", round=1)
    assert first.epsilon_before == 0.0
    assert second.epsilon_before == pytest.approx(first.epsilon_after)
    assert second.epsilon_after > second.epsilon_before


def test_refusal_leaves_the_ledger_unchanged(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = PrivacyLedger(path)
    limit = PrvAccountant().epsilon([ev()] * 3, delta=1e-5) + 1e-6  # room for exactly three rounds
    for rnd in range(3):
        spend(ledger, rnd=rnd, limit=limit)
    before = (path.read_bytes(), head_path(path).read_bytes())
    with pytest.raises(BudgetExhaustedError) as info:
        ledger.reserve(dataset=DATA, event=ev(), delta=1e-5, limit=limit, run_id="run-1", round=3)
    message = str(info.value)
    assert "site-a.jsonl" in message and "over the limit" in message and "Nothing was trained" in message
    assert (path.read_bytes(), head_path(path).read_bytes()) == before


def test_reserved_without_commit_counts_as_spent(tmp_path):
    path = tmp_path / "l.jsonl"
    reservation = PrivacyLedger(path).reserve(dataset=DATA, event=ev(), delta=1e-5, limit=10.0, run_id="r")
    # "crash": never committed
    assert PrivacyLedger(path).spent(DATA, delta=1e-5) == pytest.approx(reservation.epsilon_after)
    assert PrivacyLedger(path).snapshot().committed == frozenset()


def test_non_private_training_needs_an_explicit_unlimited_budget(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    with pytest.raises(BudgetExhaustedError, match="infinite epsilon"):
        ledger.reserve(dataset=DATA, event=None, delta=1e-5, limit=10.0, run_id="r")
    ledger.reserve(dataset=DATA, event=None, delta=1e-5, limit=None, run_id="r")
    assert math.isinf(ledger.spent(DATA, delta=1e-5))
    with pytest.raises(BudgetExhaustedError):
        ledger.reserve(dataset=DATA, event=ev(), delta=1e-5, limit=1000.0, run_id="r", round=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delta": 0.0}, r"delta must be in \(0, 1\); got 0.0"),
        ({"delta": 1.5}, "delta must be in"),
        ({"delta": 1e-3}, r"not below 1/N = 0.0001"),
        ({"limit": 0.0}, "epsilon limit must be a finite number > 0; got 0.0"),
        ({"limit": -2.0}, "got -2.0"),
        ({"event": DpSgdEvent(noise_multiplier=0.0, sample_rate=0.1, steps=1, max_grad_norm=1.0)}, "must be > 0"),
    ],
)
def test_bad_parameters_are_refused_and_nothing_is_written(tmp_path, kwargs, message):
    path = tmp_path / "l.jsonl"
    values = {"dataset": DATA, "event": ev(), "delta": 1e-5, "limit": 10.0, "run_id": "r", **kwargs}
    with pytest.raises(PrivacyParameterError, match=message):
        PrivacyLedger(path).reserve(**values)
    assert not path.exists()


def test_delta_and_accountant_are_fixed_per_dataset(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    spend(ledger)
    with pytest.raises(PrivacyParameterError, match="accounted at delta 1e-05"):
        ledger.reserve(dataset=DATA, event=ev(), delta=1e-6, limit=10.0, run_id="r")
    with pytest.raises(PrivacyParameterError, match="rdp"):
        ledger.reserve(dataset=DATA, event=ev(), delta=1e-5, limit=10.0, run_id="r", accountant="rdp")


def test_calibration_fits_the_whole_plan_into_the_remaining_budget(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    spend(ledger, ev(1.0, 0.02, 200))
    sigma = ledger.calibrate(
        dataset=DATA, limit=5.0, delta=1e-5, sample_rate=0.02, steps=50, rounds=4, max_grad_norm=1.0
    )
    plan = [ev(1.0, 0.02, 200)] + [ev(sigma, 0.02, 50)] * 4
    total = PrvAccountant().epsilon(plan, delta=1e-5)
    assert 0.98 * 5.0 <= total <= 5.0
    for rnd in range(4):  # every planned round then fits
        spend(ledger, ev(sigma, 0.02, 50), limit=5.0, rnd=rnd + 1)


def test_signed_ledger_requires_its_key(tmp_path):
    key_path = tmp_path / "site.key"
    generate_signing_key(key_path)
    assert oct(key_path.stat().st_mode & 0o777) == "0o600"
    key = load_signing_key(key_path)
    path = tmp_path / "l.jsonl"
    spend(PrivacyLedger(path, signing_key=key))
    header = json.loads(path.read_text().splitlines()[0])
    assert header["public_key"] and all(json.loads(line)["signature"] for line in path.read_text().splitlines())
    with pytest.raises(LedgerError, match="pass its signing key"):
        spend(PrivacyLedger(path), rnd=1)
    other = tmp_path / "other.key"
    generate_signing_key(other)
    with pytest.raises(LedgerError, match="not the key this ledger is signed with"):
        spend(PrivacyLedger(path, signing_key=load_signing_key(other)), rnd=1)
    spend(PrivacyLedger(path, signing_key=key), rnd=1)


def test_unreadable_ledger_is_corrupt_not_empty(tmp_path):
    path = tmp_path / "l.jsonl"
    path.write_bytes(b"")
    with pytest.raises(LedgerCorruptError, match="empty"):
        PrivacyLedger(path).snapshot()
    path.write_text('{"type": "header"}\n')
    with pytest.raises(LedgerCorruptError, match=r"l.jsonl:1: not a valid ledger record"):
        PrivacyLedger(path).snapshot()


def test_commit_of_unknown_or_twice(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    reservation = spend(ledger)
    with pytest.raises(LedgerError, match="already committed"):
        ledger.commit(reservation)
    other = PrivacyLedger(tmp_path / "m.jsonl")
    spend(other)
    with pytest.raises(LedgerError, match="no reservation"):
        other.commit(reservation)
