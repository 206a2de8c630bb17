"""Classification metrics of a model on held-out data, computed by scikit-learn.

Note for data owners: evaluation metrics are computed on the raw held-out data and are NOT differentially private.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from common.errors import ModelError
from common.training.batches import TokenizedTexts

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class EvalMetrics:
    """Macro-averaged metrics; ``roc_auc`` is None when only one class occurs in the labels (it is undefined)."""

    num_examples: int
    loss: float
    accuracy: float
    macro_f1: float
    precision: float
    recall: float
    roc_auc: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        """Plain JSON-able mapping."""
        return asdict(self)


@torch.no_grad()
def predict_proba(model: nn.Module, data: TokenizedTexts, *, batch_size: int, device: torch.device) -> np.ndarray:
    """Class probabilities, shape (len(data), num_labels), in data order."""
    was_training = model.training
    model.eval()
    model.to(device)
    chunks = []
    try:
        for start in range(0, len(data), batch_size):
            inputs, _ = data.batch(range(start, min(start + batch_size, len(data))), device)
            logits = model(**inputs).logits.float()
            if not torch.isfinite(logits).all():
                raise ModelError(
                    "the model's outputs are not finite numbers: training diverged (lower the learning rate)"
                )
            chunks.append(torch.softmax(logits, dim=-1).cpu())
    finally:
        model.train(was_training)
    proba = torch.cat(chunks).numpy().astype(np.float64)
    return proba / proba.sum(axis=1, keepdims=True)  # exact in float64 (scikit-learn checks rows sum to 1)


def classification_metrics(labels: np.ndarray, proba: np.ndarray) -> EvalMetrics:
    """Loss, accuracy, macro F1/precision/recall and ROC-AUC (binary, or one-vs-rest macro for multi-class).

    Macro averages run over the classes present in the labels or predictions (scikit-learn's default), so a
    class absent from a site's held-out data does not count as a zero.
    """
    # Imported here: scikit-learn costs over a second to import, and a deployed site starts a fresh process for
    # every round (Flower 1.41), most of which only train.
    from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score, recall_score, roc_auc_score

    num_labels = proba.shape[1]
    classes = list(range(num_labels))
    predictions = proba.argmax(axis=1)
    roc_auc: float | None
    if len(np.unique(labels)) < 2:
        roc_auc = None
    elif num_labels == 2:
        roc_auc = float(roc_auc_score(labels, proba[:, 1]))
    else:
        present = np.unique(labels)
        if len(present) < num_labels:
            # One-vs-rest over the classes that occur (renormalised), since absent classes have no positives.
            sub = proba[:, present]
            roc_auc = float(
                roc_auc_score(labels, sub / sub.sum(axis=1, keepdims=True), multi_class="ovr", labels=present)
            )
        else:
            roc_auc = float(roc_auc_score(labels, proba, multi_class="ovr", labels=classes))
    return EvalMetrics(
        num_examples=len(labels),
        loss=float(log_loss(labels, proba, labels=classes)),
        accuracy=float(accuracy_score(labels, predictions)),
        macro_f1=float(f1_score(labels, predictions, average="macro", zero_division=0)),
        precision=float(precision_score(labels, predictions, average="macro", zero_division=0)),
        recall=float(recall_score(labels, predictions, average="macro", zero_division=0)),
        roc_auc=roc_auc,
    )


def evaluate(model: nn.Module, data: TokenizedTexts, *, batch_size: int, device: torch.device) -> EvalMetrics:
    """Metrics of ``model`` on ``data``."""
    proba = predict_proba(model, data, batch_size=batch_size, device=device)
    return classification_metrics(data.labels.numpy(), proba)
