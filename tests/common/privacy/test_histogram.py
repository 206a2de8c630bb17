"""Noisy label histograms: reserved before the labels are read, charged and composed, marked for auditors, unbiased."""

from __future__ import annotations

import json
import math
import statistics
import warnings

import pytest
import torch

from common.data.sample import sample_dataset
from common.errors import BudgetExhaustedError
from common.privacy.accountant import get_accountant
from common.privacy.audit import audit_ledger
from common.privacy.events import DpSgdEvent
from common.privacy.histogram import histogram_event, histogram_sigma, release_label_histogram
from common.privacy.ledger import PrivacyLedger
from common.privacy.records import ReserveRecord

TEXTS = sample_dataset(300, seed=4).texts
LABELS = tuple(0 if i < 200 else 1 if i < 270 else 2 for i in range(len(TEXTS)))
TRUE_COUNTS = (200, 70, 30)
TRAINING = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.1, steps=30, max_grad_norm=1.0)
DELTA = 1e-5


def release(ledger: PrivacyLedger, *, sigma=5.0, labels=LABELS, limit=None, seed=0, run="run-1"):
    dataset = ledger.dataset(TEXTS, dataset_id="train")
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return release_label_histogram(
        ledger,
        dataset=dataset,
        labels=labels,
        num_classes=3,
        sigma=sigma,
        delta=DELTA,
        limit=limit,
        accountant="rdp",
        run_id=run,
        generator=generator,
    )


def train(ledger: PrivacyLedger, *, event=TRAINING, run="run-0", limit=None):
    dataset = ledger.dataset(TEXTS, dataset_id="train")
    reservation = ledger.reserve(dataset=dataset, event=event, delta=DELTA, limit=limit, accountant="rdp", run_id=run)
    ledger.commit(reservation)
    return reservation


def analytic_gaussian_epsilon(sigma: float, delta: float) -> float:
    """Exact epsilon of the Gaussian mechanism with sensitivity 1 (Balle & Wang 2018, Theorem 8), by bisection."""

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def delta_at(eps: float) -> float:
        return phi(1 / (2 * sigma) - eps * sigma) - math.exp(eps) * phi(-1 / (2 * sigma) - eps * sigma)

    low, high = 0.0, 100.0
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if delta_at(mid) > delta else (low, mid)
    return high


class UnreadableLabels:
    """Labels whose values must not be read (a refused release computes nothing from the data)."""

    def __len__(self) -> int:
        return len(LABELS)

    def __iter__(self):
        pytest.fail("the labels were read although the release was refused")

    def __getitem__(self, index):
        pytest.fail("the labels were read although the release was refused")


def test_release_is_reserved_committed_and_marked_as_a_label_histogram(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    histogram, reservation = release(ledger)
    snapshot = ledger.snapshot()  # verifies the chain with the new field
    (record,) = snapshot.reservations()
    assert record.event_id == reservation.event_id and record.event_id in snapshot.committed
    assert record.purpose == "label-histogram" and record.run_id == "run-1"
    assert record.dp_event() == histogram.event == histogram_event(5.0)
    assert record.record_set == ledger.dataset(TEXTS, dataset_id="train").fingerprint
    assert '"purpose":"label-histogram"' in ledger.path.read_text()
    rows = audit_ledger(ledger.path, verify=True).to_json()["datasets"][0]["events_detail"]
    assert [row["purpose"] for row in rows] == ["label-histogram"]


def test_a_training_reserve_writes_no_purpose_so_its_hash_is_the_old_one(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    train(ledger)
    release(ledger)
    assert ledger.path.read_text().count('"purpose"') == 1
    (trained, _) = ledger.snapshot().reservations()
    assert trained.purpose is None and "purpose" not in trained.model_dump()
    report = audit_ledger(ledger.path, verify=True)
    assert report.datasets[0].label_histogram_events == [ledger.snapshot().reservations()[1].event_id]
    assert [row["purpose"] for row in report.to_json()["datasets"][0]["events_detail"]] == ["train", "label-histogram"]


def test_histogram_epsilon_composes_with_the_datasets_training(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    train(ledger)
    dataset = ledger.dataset(TEXTS, dataset_id="train")
    before = ledger.spent(dataset, delta=DELTA, accountant="rdp")
    _, reservation = release(ledger, sigma=3.0)
    after = ledger.status(dataset, delta=DELTA, accountant="rdp", limit=None).spent
    rdp = get_accountant("rdp")
    assert before == pytest.approx(rdp.epsilon([TRAINING], delta=DELTA))
    assert after == pytest.approx(rdp.epsilon([TRAINING, histogram_event(3.0)], delta=DELTA))
    assert after > before and reservation.epsilon_after == pytest.approx(after)


def test_a_refused_release_changes_nothing_and_never_reads_the_labels(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    train(ledger)
    files = [ledger.path, ledger.path.with_name(ledger.path.name + ".head")]
    before = [f.read_bytes() for f in files]
    spent = ledger.spent(ledger.dataset(TEXTS, dataset_id="train"), delta=DELTA, accountant="rdp")
    with pytest.raises(BudgetExhaustedError, match="Nothing was released"):
        release(ledger, sigma=1.0, labels=UnreadableLabels(), limit=spent + 0.5)
    assert [f.read_bytes() for f in files] == before


def test_labels_must_be_one_per_record_before_anything_is_reserved(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    with pytest.raises(ValueError, match="one label per"):
        release(ledger, labels=(*LABELS, 0))
    assert not ledger.path.exists()


def test_noisy_counts_are_unbiased_and_never_the_true_counts(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    draws = [release(ledger, sigma=2.0, seed=seed)[0].counts for seed in range(40)]
    assert all(c != t for counts in draws for c, t in zip(counts, TRUE_COUNTS, strict=True))
    for k, true in enumerate(TRUE_COUNTS):
        # 40 draws of sd 2: the mean's sd is 0.32; 4 sd from the truth fails by chance once in ~16,000 runs.
        assert statistics.fmean(d[k] for d in draws) == pytest.approx(true, abs=1.3)
    assert statistics.stdev(d[0] - TRUE_COUNTS[0] for d in draws) == pytest.approx(2.0, rel=0.4)
    assert release(ledger, seed=7)[0].counts == release(ledger, seed=7)[0].counts  # a seed reproduces the noise


def test_without_a_generator_the_noise_comes_from_the_os_not_torchs_seeded_global_generator(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = release(ledger, seed=None)[0].counts
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(0)
    assert release(ledger, seed=None)[0].counts != first


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("target", [0.4, 1.0, 4.0])
def test_histogram_sigma_costs_the_target_epsilon(accountant, target):
    sigma = histogram_sigma(epsilon=target, delta=DELTA, accountant=accountant)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Opacus's RDP: "optimal order is the largest alpha"
        spent = get_accountant(accountant).epsilon([histogram_event(sigma)], delta=DELTA)
    assert target * 0.99 <= spent <= target
    assert analytic_gaussian_epsilon(sigma, DELTA) <= spent  # the accountant never under-reports


@pytest.mark.parametrize("sigma", [0.8, 2.0, 5.0, 20.0])
def test_accountants_take_sample_rate_one_as_the_gaussian_mechanism(sigma):
    exact = analytic_gaussian_epsilon(sigma, DELTA)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        prv = get_accountant("prv").epsilon([histogram_event(sigma)], delta=DELTA)
        rdp = get_accountant("rdp").epsilon([histogram_event(sigma)], delta=DELTA)
        looser = get_accountant("prv").epsilon([histogram_event(sigma * 1.5)], delta=DELTA)
    assert exact <= prv <= exact * 1.01  # tight upper bound
    assert exact <= rdp <= exact * 1.2  # looser upper bound
    assert looser < prv


def test_calibrating_a_run_keeps_its_own_histogram_in_the_prior(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    plan = {"limit": 3.0, "delta": DELTA, "sample_rate": 0.1, "steps": 30, "rounds": 1, "max_grad_norm": 1.0}
    dataset = ledger.dataset(TEXTS, dataset_id="train")
    alone = ledger.calibrate(dataset=dataset, accountant="rdp", run_id="run-1", **plan)
    release(ledger, sigma=2.0, run="run-1")
    sigma = ledger.calibrate(dataset=dataset, accountant="rdp", run_id="run-1", **plan)
    assert sigma > alone
    event = DpSgdEvent(noise_multiplier=sigma, sample_rate=0.1, steps=30, max_grad_norm=1.0)
    reservation = ledger.reserve(dataset=dataset, event=event, delta=DELTA, limit=3.0, accountant="rdp", run_id="run-1")
    assert reservation.epsilon_after <= 3.0
    assert isinstance(ledger.snapshot().records[-1], ReserveRecord)


def test_audit_json_of_a_ledger_with_a_histogram_is_serialisable(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    release(ledger)
    json.dumps(audit_ledger(ledger.path, verify=True).to_json())
