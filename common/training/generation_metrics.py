"""Metrics of generated text against references: ROUGE-L, BLEU and exact match, by maintained libraries.

* ROUGE-L F-measure (Lin 2004), Google's ``rouge-score`` implementation, with stemming, averaged over examples.
* Corpus BLEU (Papineni et al. 2002) by ``sacrebleu`` (Post 2018: the standard, reproducible tokenisation), on
  0..100 as sacrebleu reports it.
* Exact match: the share of generations equal to their reference after whitespace is collapsed and the ends
  stripped (case kept: for an instruction like "Uppercase: x" case is the answer).

Perplexity is exp of the mean per-token loss on response tokens and is computed where the loss is
(:func:`perplexity`). Like every evaluation metric, these are computed on held-out data and are NOT
differentially private.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class GenerationMetrics:
    """Scores of ``num_examples`` generations; ``rouge_l`` and ``exact_match`` in [0, 1], ``bleu`` in [0, 100]."""

    num_examples: int
    rouge_l: float
    bleu: float
    exact_match: float

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready."""
        return asdict(self)


def _normalised(text: str) -> str:
    return " ".join(text.split())


def generation_metrics(predictions: Sequence[str], references: Sequence[str]) -> GenerationMetrics:
    """ROUGE-L, BLEU and exact match of ``predictions`` against ``references`` (same length, at least one)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"need as many predictions as references (>= 1); got {len(predictions)}, {len(references)}")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references, strict=True)]
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
    exact = [_normalised(p) == _normalised(r) for p, r in zip(predictions, references, strict=True)]
    return GenerationMetrics(
        num_examples=len(predictions),
        rouge_l=sum(rouge) / len(rouge),
        bleu=float(bleu),
        exact_match=sum(exact) / len(exact),
    )


def perplexity(mean_token_loss: float) -> float:
    """exp(mean per-token cross-entropy), infinite when the loss is (a diverged model)."""
    return math.exp(mean_token_loss) if mean_token_loss < 700 else math.inf
