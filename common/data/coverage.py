"""Preflight a dataset against the model's tokenizer before any privacy budget is reserved.

Two failures are silent otherwise. (a) Text the tokenizer does not cover becomes its unknown token: a WordPiece
vocabulary that knows only a few hundred CJK characters turns most Chinese text into ``[UNK]``, and the model then
trains on noise while the ledger still charges epsilon. (b) Examples longer than ``--max-length`` tokens are cut,
and whatever stood at the end is never seen. :func:`measure_coverage` counts both from the texts alone (nothing
else of the data is read), tokenising once, in batches, without truncation; :func:`check_coverage` turns the
shares into one warning line per exceeded limit, or into a :class:`~common.errors.DataValidationError` in strict
mode. Large data is measured on a seeded sample of at most ``sample`` texts, so the check stays fast.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.errors import DataValidationError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# At 5% unknown tokens a sentence of twenty tokens already loses about one word on average, so most examples are
# damaged; above that the model is not reading the language at all.
UNKNOWN_SHARE_LIMIT = 0.05
# When more than a tenth of the examples are cut, a noticeable part of the data may lose its label-bearing end
# (conclusions such as "... but overall excellent" tend to come last).
TRUNCATED_SHARE_LIMIT = 0.10

_BATCH = 256
_STRICT_SUFFIX = " (--strict refuses data the model covers badly; nothing was trained or spent)"


@dataclass(frozen=True)
class Coverage:
    """How well a tokenizer covers (a sample of) a dataset's texts.

    ``tokens`` and ``unknown_tokens`` count only tokens produced from the text (not the special tokens the
    tokenizer adds, such as ``[CLS]``/``[SEP]``); ``truncated_examples`` counts examples whose full length, special
    tokens included, exceeds ``max_length``. A tokenizer without an unknown token, and byte-level BPE (GPT-2's),
    which can spell every byte and so never emits it for text, gives an unknown share of 0 by construction: for such
    models the check says nothing about language coverage.
    """

    examples_checked: int
    tokens: int
    unknown_tokens: int
    truncated_examples: int
    max_length: int
    source: str

    @property
    def unknown_share(self) -> float:
        """Unknown tokens per text token (0 when there are no tokens)."""
        return self.unknown_tokens / self.tokens if self.tokens else 0.0

    @property
    def truncated_share(self) -> float:
        """Examples longer than ``max_length`` per example checked (0 when none was checked)."""
        return self.truncated_examples / self.examples_checked if self.examples_checked else 0.0

    def _findings(self) -> list[str]:
        findings = []
        if self.unknown_share > UNKNOWN_SHARE_LIMIT:
            findings.append(
                f"{self.unknown_share:.1%} of tokens are unknown to the model's tokenizer "
                f"(limit {UNKNOWN_SHARE_LIMIT:.0%}): the base model does not cover this text's language or script; "
                "choose a base model whose vocabulary covers it (--model)"
            )
        if self.truncated_share > TRUNCATED_SHARE_LIMIT:
            findings.append(
                f"{self.truncated_share:.1%} of examples are longer than --max-length {self.max_length} tokens "
                f"and will be cut (limit {TRUNCATED_SHARE_LIMIT:.0%}); raise --max-length (or accept the cut)"
            )
        return findings

    def problems(self) -> list[str]:
        """One human line per exceeded limit, each starting with the source (empty when the data is fine)."""
        return [f"{self.source}: {finding}" for finding in self._findings()]


def measure_coverage(
    texts: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int,
    source: str,
    sample: int = 5000,
    seed: int = 0,
) -> Coverage:
    """Tokenise ``texts`` as the model would see them (special tokens added, no truncation) and count.

    With more than ``sample`` texts, a sample of ``sample`` of them drawn with ``random.Random(seed)`` is measured
    (the same data and seed always give the same sample, in the data's order).
    """
    if max_length < 1 or sample < 1:
        raise ValueError(f"max_length and sample must be positive, got {max_length} and {sample}")
    chosen: Sequence[str] = texts
    if len(texts) > sample:
        chosen = [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), sample))]
    unk_id = tokenizer.unk_token_id
    tokens = unknown = truncated = 0
    for start in range(0, len(chosen), _BATCH):
        encoded = tokenizer(
            list(chosen[start : start + _BATCH]),
            add_special_tokens=True,
            truncation=False,
            return_special_tokens_mask=True,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,  # no "longer than the model's maximum" log line: counting that is our job
        )
        for ids, special in zip(encoded["input_ids"], encoded["special_tokens_mask"], strict=True):
            if len(ids) > max_length:
                truncated += 1
            text_ids = [token for token, is_special in zip(ids, special, strict=True) if not is_special]
            tokens += len(text_ids)
            if unk_id is not None:
                unknown += text_ids.count(unk_id)
    return Coverage(
        examples_checked=len(chosen),
        tokens=tokens,
        unknown_tokens=unknown,
        truncated_examples=truncated,
        max_length=max_length,
        source=source,
    )


def check_coverage(coverage: Coverage, *, strict: bool) -> list[str]:
    """The warning lines for ``coverage`` (empty when fine); with ``strict``, any problem is raised instead."""
    problems = coverage.problems()
    if strict and problems:
        # DataValidationError prefixes the path itself, so the message carries the findings without it.
        raise DataValidationError("; and ".join(coverage._findings()) + _STRICT_SUFFIX, path=coverage.source)
    return problems
