from __future__ import annotations

import numpy as np
import pytest

from common.training.evaluation import classification_metrics


def test_binary_metrics():
    labels = np.array([0, 0, 1, 1, 1])
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    m = classification_metrics(labels, proba)
    assert m.accuracy == pytest.approx(3 / 5)
    # class 0: tp=1 fp=1 fn=1 -> p=r=f1=0.5; class 1: tp=2 fp=1 fn=1 -> p=r=f1=2/3
    assert m.macro_f1 == pytest.approx((0.5 + 2 / 3) / 2)
    assert m.precision == pytest.approx((0.5 + 2 / 3) / 2)
    assert m.recall == pytest.approx((0.5 + 2 / 3) / 2)
    assert m.roc_auc == pytest.approx(5 / 6)  # 5 of 6 (positive, negative) pairs ranked correctly
    expected_loss = -np.mean(np.log([0.9, 0.4, 0.8, 0.7, 0.4]))
    assert m.loss == pytest.approx(expected_loss)
    assert m.num_examples == 5


def test_multiclass_one_vs_rest_and_single_class():
    labels = np.array([0, 1, 2, 2])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    m = classification_metrics(labels, proba)
    assert m.accuracy == 1.0 and m.roc_auc == pytest.approx(1.0)
    single = classification_metrics(np.array([1, 1]), np.array([[0.2, 0.8], [0.6, 0.4]]))
    assert single.roc_auc is None
    assert single.to_dict()["accuracy"] == 0.5


def test_a_diverged_model_is_a_clear_error_not_a_metrics_traceback(tiny_ref, tiny_tokenizer):
    import torch

    from common.data.sample import sample_dataset
    from common.errors import ModelError
    from common.model.loading import load_base_classifier
    from common.training.batches import TokenizedTexts
    from common.training.evaluation import evaluate

    model = load_base_classifier(tiny_ref, ("negative", "positive"))
    with torch.no_grad():
        model.classifier.weight.fill_(float("nan"))
    data = TokenizedTexts(sample_dataset(8, seed=1), tiny_tokenizer, max_length=16)
    with pytest.raises(ModelError, match="training diverged"):
        evaluate(model, data, batch_size=4, device=torch.device("cpu"))
