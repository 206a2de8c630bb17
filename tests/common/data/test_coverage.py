"""The tokenizer-coverage preflight: unknown tokens, truncation, strict refusal, sampling (tiny offline tokenizers)."""

from __future__ import annotations

import re

import pytest

from common.data.coverage import (
    TRUNCATED_SHARE_LIMIT,
    UNKNOWN_SHARE_LIMIT,
    Coverage,
    check_coverage,
    measure_coverage,
)
from common.data.sample import sample_dataset
from common.errors import DataValidationError

SOURCE = "data/x.jsonl"
CHINESE = ["这个产品非常好用", "服务态度很差", "电池续航时间太短了"]


@pytest.fixture(scope="module")
def english() -> list[str]:
    return list(sample_dataset(400).texts)


@pytest.fixture(scope="module")
def word_tokenizer(tmp_path_factory: pytest.TempPathFactory, english):
    """A word-level WordPiece tokenizer whose vocabulary is exactly the English sample's words.

    Built here rather than taken from conftest's ``tiny_tokenizer``: with transformers 5, ``BertTokenizerFast``
    ignores ``vocab_file=`` and keeps only the five special tokens, so that tokenizer maps every word to [UNK].
    """
    from transformers import BertTokenizer

    words = sorted({w for text in english for w in re.findall(r"\w+|[^\w\s]", text.lower())})
    vocab_file = tmp_path_factory.mktemp("coverage-vocab") / "vocab.txt"
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizer(vocab=str(vocab_file), do_lower_case=True)
    assert len(tokenizer) == 5 + len(words)  # the vocabulary file was really read
    return tokenizer


@pytest.fixture(scope="module")
def byte_level_tokenizer():
    """A byte-level BPE tokenizer with no unknown token at all, trained offline on a few sentences."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    trained = ByteLevelBPETokenizer()
    trained.train_from_iterator(["the battery was great", "the staff was rude"], vocab_size=300, show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=trained._tokenizer)


def test_english_inside_the_vocabulary_has_no_problems(word_tokenizer, english):
    coverage = measure_coverage(english, word_tokenizer, max_length=64, source=SOURCE)
    assert coverage.examples_checked == len(english)
    assert coverage.tokens > 5 * len(english)
    assert coverage.unknown_tokens == 0
    assert coverage.truncated_examples == 0
    assert check_coverage(coverage, strict=True) == []


def test_text_outside_the_vocabulary_is_mostly_unknown_and_named_in_one_line(word_tokenizer):
    coverage = measure_coverage(CHINESE, word_tokenizer, max_length=64, source=SOURCE)
    # Every CJK character is its own WordPiece token and none is in the vocabulary; [CLS]/[SEP] are not counted.
    assert coverage.tokens == sum(len(text) for text in CHINESE)
    assert coverage.unknown_share == 1.0
    problems = check_coverage(coverage, strict=False)
    assert problems == [
        f"{SOURCE}: 100.0% of tokens are unknown to the model's tokenizer (limit 5%): the base model does not "
        "cover this text's language or script; choose a base model whose vocabulary covers it (--model)"
    ]


def test_share_is_reported_with_one_decimal_and_only_above_the_limit():
    below = Coverage(100, 1000, 50, 10, 64, SOURCE)  # exactly at both limits: fine
    assert below.unknown_share == UNKNOWN_SHARE_LIMIT and below.truncated_share == TRUNCATED_SHARE_LIMIT
    assert below.problems() == []
    above = Coverage(100, 1000, 632, 0, 64, SOURCE)
    assert above.problems()[0].startswith(f"{SOURCE}: 63.2% of tokens are unknown")


def test_strict_refuses_naming_the_file_and_the_rule(word_tokenizer):
    coverage = measure_coverage(CHINESE, word_tokenizer, max_length=64, source=SOURCE)
    with pytest.raises(DataValidationError) as caught:
        check_coverage(coverage, strict=True)
    message = str(caught.value)
    assert caught.value.path == SOURCE
    assert message.startswith(f"{SOURCE}: 100.0% of tokens are unknown")
    assert message.count(SOURCE) == 1
    assert "--model" in message
    assert message.endswith("(--strict refuses data the model covers badly; nothing was trained or spent)")


def test_long_texts_are_reported_as_cut_naming_max_length(word_tokenizer, english):
    long_texts = [" ".join(english[i : i + 6]) for i in range(0, 60, 6)]  # ten texts of six sentences each
    texts = long_texts + english[:10]  # half long, half short
    coverage = measure_coverage(texts, word_tokenizer, max_length=32, source=SOURCE)
    assert coverage.truncated_examples == len(long_texts)
    assert coverage.unknown_tokens == 0
    assert check_coverage(coverage, strict=False) == [
        f"{SOURCE}: 50.0% of examples are longer than --max-length 32 tokens and will be cut (limit 10%); "
        "raise --max-length (or accept the cut)"
    ]
    # The same texts fit a long enough limit; the count includes [CLS] and [SEP].
    longest = max(len(word_tokenizer(text)["input_ids"]) for text in texts)
    assert measure_coverage(texts, word_tokenizer, max_length=longest, source=SOURCE).truncated_examples == 0
    assert measure_coverage(texts, word_tokenizer, max_length=longest - 1, source=SOURCE).truncated_examples == 1


def test_both_problems_are_joined_into_one_strict_refusal(word_tokenizer):
    coverage = measure_coverage(CHINESE, word_tokenizer, max_length=4, source=SOURCE)
    assert len(coverage.problems()) == 2
    with pytest.raises(DataValidationError, match=r"unknown .* --max-length 4 tokens"):
        check_coverage(coverage, strict=True)


def test_sampling_caps_the_examples_checked_and_is_deterministic(word_tokenizer, english):
    texts = english + CHINESE * 100  # 400 English, 300 Chinese: samples differ in their unknown counts
    first = measure_coverage(texts, word_tokenizer, max_length=64, source=SOURCE, sample=50, seed=7)
    again = measure_coverage(texts, word_tokenizer, max_length=64, source=SOURCE, sample=50, seed=7)
    assert first.examples_checked == 50
    assert first == again
    others = {
        measure_coverage(texts, word_tokenizer, max_length=64, source=SOURCE, sample=50, seed=s) for s in range(5)
    }
    assert len(others) > 1  # the seed matters
    whole = measure_coverage(texts, word_tokenizer, max_length=64, source=SOURCE, sample=len(texts), seed=7)
    assert whole.examples_checked == len(texts)


def test_a_tokenizer_without_an_unknown_token_reports_zero_unknown(byte_level_tokenizer):
    assert byte_level_tokenizer.unk_token_id is None
    coverage = measure_coverage(CHINESE, byte_level_tokenizer, max_length=512, source=SOURCE)
    assert coverage.tokens >= sum(len(text) for text in CHINESE)  # bytes never seen in training still tokenise
    assert coverage.unknown_tokens == 0
    assert coverage.unknown_share == 0.0
    assert check_coverage(coverage, strict=True) == []


def test_invalid_arguments_are_refused(word_tokenizer):
    with pytest.raises(ValueError):
        measure_coverage(["a"], word_tokenizer, max_length=0, source=SOURCE)
    with pytest.raises(ValueError):
        measure_coverage(["a"], word_tokenizer, max_length=8, source=SOURCE, sample=0)


def test_the_shared_tiny_tokenizer_really_covers_the_sample(tiny_tokenizer):
    # Guards the test fixture itself: a tokenizer that silently ignored its vocabulary made every word [UNK].
    from common.data.sample import sample_dataset

    coverage = measure_coverage(sample_dataset(200).texts, tiny_tokenizer, max_length=128, source="sample")
    assert coverage.tokens > 0 and coverage.unknown_share == 0.0
