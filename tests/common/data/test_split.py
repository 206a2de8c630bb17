from __future__ import annotations

import pytest

from common.data.sample import sample_dataset
from common.data.split import train_eval_split
from common.errors import ConfigError


def test_split_is_seeded_disjoint_and_stratified():
    data = sample_dataset(500)
    train, evaluation = train_eval_split(data, eval_fraction=0.2, seed=7)
    again_train, _ = train_eval_split(data, eval_fraction=0.2, seed=7)
    other_train, _ = train_eval_split(data, eval_fraction=0.2, seed=8)
    assert len(train) == 400 and len(evaluation) == 100
    assert train.texts == again_train.texts
    assert train.texts != other_train.texts
    assert not set(train.texts) & set(evaluation.texts)
    assert evaluation.label_counts() == {"negative": 50, "positive": 50}


def test_split_rejects_degenerate_fractions():
    data = sample_dataset(10)
    with pytest.raises(ConfigError, match="eval fraction must be in"):
        train_eval_split(data, eval_fraction=1.5, seed=0)
    with pytest.raises(ConfigError, match="leaves an empty split"):
        train_eval_split(data, eval_fraction=0.01, seed=0)
