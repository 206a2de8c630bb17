"""Per-record budgets against the probes that bought fresh budget before: relabelling, re-encoding, reordering,
duplicating, subsetting and growing a dataset. Each of these gave a new dataset fingerprint, hence a full new limit.
"""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pytest

from common.data.dataset import LabeledTexts
from common.data.dedupe import normalise
from common.data.sample import sample_dataset
from common.errors import BudgetExhaustedError, LedgerError, LedgerTamperError
from common.privacy.accountant import get_accountant
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import PrivacyLedger
from common.privacy.record_ids import key_path
from common.privacy.records import RecordSetRecord
from common.privacy.storage import read_records

EVENT = DpSgdEvent(noise_multiplier=2.0, sample_rate=0.1, steps=30, max_grad_norm=1.0)  # 1.46 per run
TEXTS = sample_dataset(300, seed=4).texts


def labelled(names: tuple[str, str], texts=TEXTS) -> LabeledTexts:
    return LabeledTexts(texts, tuple(i % 2 for i in range(len(texts))), names, "file")


def train(ledger: PrivacyLedger, texts, *, limit: float = 10.0, names=("negative", "positive"), run: str = "r"):
    """What a site does for one run: the records it trains on, charged to the ledger (v1 source for legacy)."""
    data = labelled(names, tuple(texts))
    dataset = ledger.dataset(data.texts, dataset_id="file", source=(data.fingerprint, data.texts))
    return ledger.reserve(dataset=dataset, event=EVENT, delta=1e-5, limit=limit, accountant="rdp", run_id=run)


def one_run() -> float:
    return get_accountant("rdp").epsilon([EVENT], delta=1e-5)


def test_four_relabellings_of_the_same_records_compose_and_stop_at_the_limit(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    namings = [("negative", "positive"), ("positive", "negative"), ("0", "1"), ("bad", "good")]
    assert len({labelled(n).fingerprint for n in namings}) == 4  # four "datasets" to the old fingerprint
    spent = []
    for i, names in enumerate(namings):
        try:
            spent.append(train(ledger, TEXTS, limit=2.5, names=names, run=f"run-{i}").epsilon_after)
        except BudgetExhaustedError as refused:
            assert "over the limit 2.5" in str(refused)
            break
    # Each naming's run composes onto the same records (1.46, 2.01, 2.45); the fourth would pass the limit. The old
    # code gave each naming a fresh limit: four full runs on the same people.
    assert spent == pytest.approx([get_accountant("rdp").epsilon([EVENT] * k, delta=1e-5) for k in (1, 2, 3)])
    assert max(spent) <= 2.5


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda t: t + "  ",  # a trailing space
        lambda t: "  " + t.replace(" ", "\t "),  # other whitespace
        lambda t: t.replace(" ", "\r\n", 1),  # a line break from another tool
        lambda t: t.translate({ord(c): ord(c) + 0xFEE0 for c in "abc"}),  # full-width letters (NFKC folds them)
    ],
    ids=["trailing-space", "tabs", "crlf", "full-width"],
)
def test_re_encoded_texts_are_the_same_records(tmp_path, rewrite):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    first = ledger.dataset(TEXTS, dataset_id="a").records
    again = ledger.dataset([rewrite(t) for t in TEXTS], dataset_id="b").records
    assert np.array_equal(first, again)
    composed = "caf\u00e9 au lait"  # é as one code point, and as e + combining accent
    decomposed = "cafe\u0301 au lait"
    assert np.array_equal(
        ledger.dataset([composed], dataset_id="x").records, ledger.dataset([decomposed], dataset_id="y").records
    )


def test_reordering_and_duplicating_change_nothing(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    train(ledger, TEXTS)
    shuffled = list(reversed(TEXTS)) + list(TEXTS[:50])  # reordered, 50 rows duplicated
    dataset = ledger.dataset(shuffled, dataset_id="copy")
    assert dataset.num_examples == 300
    assert ledger.spent(dataset, delta=1e-5, accountant="rdp") == pytest.approx(one_run())


def test_a_subset_carries_its_records_history_and_a_disjoint_set_carries_none(tmp_path):
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    train(ledger, TEXTS)
    subset = ledger.dataset(TEXTS[:10], dataset_id="ten")
    other = ledger.dataset(sample_dataset(50, seed=99).texts, dataset_id="other")
    assert not set(TEXTS) & set(sample_dataset(50, seed=99).texts)
    assert ledger.spent(subset, delta=1e-5, accountant="rdp") == pytest.approx(one_run())
    assert ledger.spent(other, delta=1e-5, accountant="rdp") == 0.0


def test_a_dataset_that_grows_every_month_is_limited_by_its_oldest_records(tmp_path):
    """The normal case the old fingerprint got wrong: every month's file was a fresh dataset with a fresh limit."""
    ledger = PrivacyLedger(tmp_path / "l.jsonl")
    pool = sample_dataset(600, seed=8).texts
    limit = get_accountant("rdp").epsilon([EVENT] * 3, delta=1e-5) * 1.001  # room for three runs on one record
    months = []
    for month in range(6):
        texts = pool[: 300 + 60 * month]  # 60 new records a month
        try:
            reservation = train(ledger, texts, limit=limit, run=f"month-{month}")
        except BudgetExhaustedError as refused:
            months.append(str(refused))
            break
        months.append(reservation.epsilon_after)
    assert months[:3] == pytest.approx([get_accountant("rdp").epsilon([EVENT] * k, delta=1e-5) for k in (1, 2, 3)])
    assert isinstance(months[3], str) and "most exposed records" in months[3]  # month 4 would pass the limit
    newest = ledger.dataset(pool[420:480], dataset_id="month-3 additions")  # only ever in month 3's file: untrained
    assert ledger.spent(newest, delta=1e-5, accountant="rdp") == 0.0


def test_sets_are_stored_once_and_growth_as_a_difference(tmp_path):
    path = tmp_path / "l.jsonl"
    ledger = PrivacyLedger(path)
    pool = sample_dataset(2000, seed=5).texts
    for run in range(5):
        train(ledger, pool[:1500], limit=100.0, run=f"same-{run}")
    train(ledger, pool, limit=100.0, run="grown")
    sets = [r for r in read_records(path) if isinstance(r, RecordSetRecord)]
    # The 1500 records once (the legacy source shares them), then only the 500 added.
    assert [(s.count, s.ids is not None) for s in sets] == [(1500, True), (2000, False)]
    assert len(sets[1].added or "") < len(sets[0].ids or "") / 2


def test_the_ledger_holds_no_text_and_no_unkeyed_hash_of_one(tmp_path):
    path = tmp_path / "l.jsonl"
    train(PrivacyLedger(path), TEXTS)
    content = path.read_text()
    for text in TEXTS[:20]:
        plain = hashlib.sha256(normalise(text).encode()).digest()
        assert text not in content and plain.hex() not in content and plain[:16].hex() not in content
    assert stat.S_IMODE(os.stat(key_path(path)).st_mode) == 0o600
    assert key_path(path).read_bytes().hex() not in content


def test_a_lost_or_swapped_record_key_is_refused_never_a_fresh_budget(tmp_path):
    path = tmp_path / "l.jsonl"
    train(PrivacyLedger(path), TEXTS)
    key = key_path(path)
    original = key.read_bytes()
    key.unlink()
    with pytest.raises(LedgerError, match="record key is missing"):
        train(PrivacyLedger(path), TEXTS)
    key.write_bytes(os.urandom(32))
    with pytest.raises(LedgerTamperError, match="not the one the ledger"):
        train(PrivacyLedger(path), TEXTS)
    key.write_bytes(original)
    assert train(PrivacyLedger(path), TEXTS, run="restored").epsilon_before == pytest.approx(one_run())
