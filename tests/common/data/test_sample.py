from __future__ import annotations

from common.data.sample import SAMPLE_LABELS, sample_dataset


def test_sample_is_reproducible_balanced_and_distinct():
    a, b = sample_dataset(300, seed=1), sample_dataset(300, seed=1)
    assert a.texts == b.texts and a.fingerprint == b.fingerprint
    assert sample_dataset(300, seed=2).fingerprint != a.fingerprint
    assert len(set(a.texts)) == 300
    assert a.label_counts() == {SAMPLE_LABELS[0]: 150, SAMPLE_LABELS[1]: 150}


def test_negations_carry_the_opposite_word():
    data = sample_dataset(600)
    negated = [(t, y) for t, y in zip(data.texts, data.labels, strict=True) if " was not " in t]
    assert negated, "the sample should contain negations"
    assert {y for _, y in negated} == {0, 1}
