"""Generation metrics come from rouge-score and sacrebleu, on the scales those libraries report."""

from __future__ import annotations

import math

import pytest

from common.training.generation_metrics import generation_metrics, perplexity


def test_identical_generations_score_perfectly():
    refs = ["the cat sat on the mat", "paris is the capital of france"]
    metrics = generation_metrics(refs, refs)
    assert metrics.rouge_l == pytest.approx(1.0) and metrics.exact_match == 1.0
    assert metrics.bleu == pytest.approx(100.0)


def test_partial_overlap_and_exact_match_normalises_only_whitespace():
    metrics = generation_metrics(["the cat sat", " WORD  ", "7"], ["the cat sat on the mat", "WORD", "8"])
    assert 0 < metrics.rouge_l < 1 and 0 <= metrics.bleu < 100
    assert metrics.exact_match == pytest.approx(1 / 3)  # "WORD" matches; case would not
    assert generation_metrics(["word"], ["WORD"]).exact_match == 0.0


def test_rouge_l_is_the_longest_common_subsequence_f_measure():
    # LCS of "a b c d" and "a c d e" is "a c d": precision 3/4, recall 3/4 -> F 0.75.
    assert generation_metrics(["a b c d"], ["a c d e"]).rouge_l == pytest.approx(0.75)


def test_bad_inputs_and_perplexity():
    with pytest.raises(ValueError, match="as many predictions as references"):
        generation_metrics(["a"], [])
    assert perplexity(0.0) == 1.0 and perplexity(math.log(5)) == pytest.approx(5.0)
    assert perplexity(1e6) == math.inf
