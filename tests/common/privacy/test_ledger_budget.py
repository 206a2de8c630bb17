"""The budget questions the ledger answers: status, may this dataset train at all, and calibration of a run."""

from __future__ import annotations

import math

import pytest

from common.errors import BudgetExhaustedError, PrivacyParameterError
from common.privacy.accountant import PrvAccountant, RdpAccountant
from common.privacy.calibration import calibrate_noise_multiplier
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import PrivacyLedger
from tests.helpers import synthetic_dataset

DATA = synthetic_dataset("site-a.jsonl", 10_000, tag="a")
OTHER = synthetic_dataset("site-b.jsonl", 10_000, tag="b")
PLAN = {"delta": 1e-5, "sample_rate": 0.02, "steps": 50, "rounds": 4, "max_grad_norm": 1.0}


def ev(sigma: float = 1.0, q: float = 0.02, steps: int = 100) -> DpSgdEvent:
    return DpSgdEvent(noise_multiplier=sigma, sample_rate=q, steps=steps, max_grad_norm=1.0)


def reserve(ledger, event, *, dataset=DATA, run="run-1", rnd=0, accountant="rdp", limit=None, commit=True):
    reservation = ledger.reserve(
        dataset=dataset, event=event, delta=1e-5, limit=limit, accountant=accountant, run_id=run, round=rnd
    )
    if commit:
        ledger.commit(reservation)
    return reservation


# ----------------------------------------------------------------------------------------------------- status
def test_status_of_an_unseen_dataset_uses_the_callers_accounting(tmp_path):
    status = PrivacyLedger(tmp_path / "l.jsonl").status(DATA, delta=1e-6, accountant="rdp", limit=3.0)
    assert (status.spent, status.events, status.non_private) == (0.0, 0, False)
    assert (status.delta, status.accountant, status.limit, status.remaining) == (1e-6, "rdp", 3.0, 3.0)
    assert status.refusal() is None


def test_status_recomputes_every_event_of_the_dataset_at_the_ledgers_accounting(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    events = [ev(1.0), ev(1.3, 0.05, 40), ev(0.9)]
    reserve(ledger, events[0], accountant="prv")
    reserve(ledger, events[1], accountant="prv", run="run-2")
    reserve(ledger, events[2], accountant="prv", run="run-2", rnd=1, commit=False)  # reserved only: counts
    reserve(ledger, ev(0.5), dataset=OTHER, accountant="prv")  # another dataset's records do not count
    status = ledger.status(DATA, delta=1e-3, accountant="rdp", limit=10.0)  # the ledger's accounting wins
    assert (status.delta, status.accountant, status.events) == (1e-5, "prv", 3)
    assert status.spent == pytest.approx(PrvAccountant().epsilon(events, delta=1e-5), rel=1e-12)
    assert status.remaining == pytest.approx(10.0 - status.spent, rel=1e-12)
    assert ledger.status(DATA, delta=1e-5, limit=None).remaining is None


def test_status_of_a_non_privately_trained_dataset(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    reserve(ledger, None)
    status = ledger.status(DATA, delta=1e-5, accountant="rdp", limit=8.0)
    assert status.non_private and math.isinf(status.spent) and status.remaining == 0.0
    assert "without privacy" in (status.refusal() or "")


# ------------------------------------------------------------------------------------------- may it train?
def test_check_trainable_admits_a_dataset_below_its_limit(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    assert ledger.check_trainable(DATA, delta=1e-5, accountant="rdp", limit=1.0).spent == 0.0
    reserve(ledger, ev())
    spent = ledger.status(DATA, delta=1e-5, accountant="rdp", limit=None).spent
    status = ledger.check_trainable(DATA, delta=1e-5, accountant="rdp", limit=spent * 1.001)
    assert status.spent == spent and status.events == 1


def test_check_trainable_refuses_a_dataset_that_spent_its_limit(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = PrivacyLedger(path)
    reserve(ledger, ev())
    spent = ledger.status(DATA, delta=1e-5, accountant="rdp", limit=None).spent
    before = path.read_bytes()
    with pytest.raises(BudgetExhaustedError) as info:
        ledger.check_trainable(DATA, delta=1e-5, accountant="rdp", limit=spent)  # exactly spent: nothing left
    message = str(info.value)
    assert "site-a.jsonl" in message and "already spent" in message and str(path) in message
    assert f"of the limit {spent:g}" in message
    assert path.read_bytes() == before  # a question never writes


def test_check_trainable_refuses_non_private_history_whatever_the_limit(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    reserve(ledger, None)
    for limit in (None, 1e9):
        with pytest.raises(BudgetExhaustedError, match="trained on without privacy"):
            ledger.check_trainable(DATA, delta=1e-5, accountant="rdp", limit=limit)
    ledger.check_trainable(OTHER, delta=1e-5, accountant="rdp", limit=1.0)  # other datasets are unaffected


# ----------------------------------------------------------------------------------------------- calibration
def test_a_runs_own_earlier_rounds_do_not_lower_its_sigma(tmp_path):
    fresh = PrivacyLedger(tmp_path / "fresh.jsonl").calibrate(dataset=DATA, limit=5.0, accountant="rdp", **PLAN)
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    for rnd in range(2):  # this run's first two rounds, at its calibrated sigma
        reserve(ledger, ev(fresh, 0.02, 50), run="run-1", rnd=rnd)
    resumed = ledger.calibrate(dataset=DATA, limit=5.0, accountant="rdp", run_id="run-1", **PLAN)
    assert resumed == fresh


def test_other_runs_spend_raises_sigma_and_the_plan_fits_what_is_left(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    reserve(ledger, ev(1.0, 0.02, 200), run="earlier")
    reserve(ledger, ev(1.0, 0.02, 50), run="run-1")
    fresh = PrivacyLedger(tmp_path / "fresh.jsonl").calibrate(dataset=DATA, limit=5.0, accountant="rdp", **PLAN)
    sigma = ledger.calibrate(dataset=DATA, limit=5.0, accountant="rdp", run_id="run-1", **PLAN)
    assert sigma > fresh
    total = RdpAccountant().epsilon([ev(1.0, 0.02, 200), *[ev(sigma, 0.02, 50)] * 4], delta=1e-5)
    assert 0.98 * 5.0 <= total <= 5.0  # the earlier run's spend plus this run's whole plan
    every_run = ledger.calibrate(dataset=DATA, limit=5.0, accountant="rdp", **PLAN)  # no run_id: all events
    assert every_run > sigma


def test_the_run_target_and_the_lifetime_limit_both_bind(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    reserve(ledger, ev(1.0, 0.02, 400), run="earlier")
    for_target = calibrate_noise_multiplier(target_epsilon=2.0, accountant=RdpAccountant(), **PLAN)
    only_target = ledger.calibrate(dataset=DATA, limit=None, run_epsilon=2.0, accountant="rdp", run_id="r", **PLAN)
    assert only_target == for_target  # the run target ignores what other runs spent
    loose_limit = ledger.calibrate(dataset=DATA, limit=50.0, run_epsilon=2.0, accountant="rdp", run_id="r", **PLAN)
    assert loose_limit == for_target
    # The earlier run spent ~2.87; with the run at the target's sigma the dataset would reach ~3.31.
    tight_limit = ledger.calibrate(dataset=DATA, limit=3.2, run_epsilon=2.0, accountant="rdp", run_id="r", **PLAN)
    assert tight_limit == ledger.calibrate(dataset=DATA, limit=3.2, accountant="rdp", run_id="r", **PLAN)
    assert tight_limit > for_target


def test_calibration_refusals(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    reserve(ledger, ev(0.5, 0.5, 300), run="earlier")
    with pytest.raises(PrivacyParameterError, match="already spent"):  # what a site reports as its refusal
        ledger.calibrate(dataset=DATA, limit=2.0, accountant="rdp", run_id="r", **PLAN)
    with pytest.raises(PrivacyParameterError, match="accounted with the rdp accountant"):
        ledger.calibrate(dataset=DATA, limit=50.0, accountant="prv", run_id="r", **PLAN)
    with pytest.raises(PrivacyParameterError, match="needs an epsilon"):
        ledger.calibrate(dataset=OTHER, limit=None, accountant="rdp", **PLAN)
    reserve(ledger, None, dataset=OTHER, run="r")
    with pytest.raises(BudgetExhaustedError, match="without privacy"):  # even the run's own non-private round
        ledger.calibrate(dataset=OTHER, limit=50.0, accountant="rdp", run_id="r", **PLAN)
