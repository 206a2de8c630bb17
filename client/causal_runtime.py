"""What a site keeps loaded for a generate run: the causal LM with its LoRA adapter, and its tokenised pairs.

The generative counterpart of :mod:`client.runtime` (same caching rules: one model per process, data re-read when
the file changes, no privacy state cached). The site reads its prompt/response file with its OWN columns
(:meth:`SiteSettings.pair_spec`); prompts are rendered with the tokenizer's chat template for chat records (the
documented plain template otherwise, :mod:`common.data.templates`), exactly as ``fedtune train --task generate``
and ``fedtune generate`` render them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from client.runtime import SiteModel, file_state
from common.data.pair_split import split_pairs
from common.data.pairs import PromptResponsePairs, deduplicate_pairs, read_pairs_file
from common.federation.config import FederationConfig
from common.federation.site import SiteSettings
from common.model.adapter import trainable_keys
from common.model.causal import apply_causal_lora, ensure_pad_token, load_causal_lm
from common.model.loading import load_tokenizer, resolve_base_model
from common.training.causal_batches import TokenizedPairs, tokenize_pairs

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_lock = threading.Lock()
_MAX_CACHED_SITES = 32
_models: dict[tuple[object, ...], SiteModel] = {}
_data: dict[tuple[object, ...], SitePairs] = {}


@dataclass(frozen=True)
class SitePairs:
    """A site's pairs: the file as read, the distinct records it trains on, and the part it holds out.

    ``train_pairs`` is every distinct record (duplicates dropped, :func:`deduplicate_pairs`) unless the site releases
    held-out metrics, in which case a seeded split of them is held out as ``eval``.
    """

    source: PromptResponsePairs
    train_pairs: PromptResponsePairs
    train: TokenizedPairs
    eval: TokenizedPairs | None
    duplicates: int
    dataset_id: str


def site_causal_model(config: FederationConfig) -> SiteModel:
    """The causal LM with this run's LoRA adapter (overwritten every round) and its tokenizer (with a pad token)."""
    key = ("generate", config.model, config.lora)
    with _lock:
        if key not in _models:
            ref = resolve_base_model(config.model)
            model = apply_causal_lora(load_causal_lm(ref), config.lora)
            _models.clear()  # one model per process: free the previous run's
            tokenizer = ensure_pad_token(load_tokenizer(ref))
            _models[key] = SiteModel(model=model, tokenizer=tokenizer, trainable=trainable_keys(model))
        return _models[key]


def site_pairs(site: SiteSettings, config: FederationConfig, tokenizer: PreTrainedTokenizerBase) -> SitePairs:
    """The site's validated, tokenised pairs (re-read when the file changes)."""
    path = Path(site.data_path)
    key = (str(path), file_state(path), site.model_dump_json(), config.training.max_length, config.model)
    with _lock:
        if key not in _data:
            source = read_pairs_file(path, site.pair_spec())
            distinct, duplicates = deduplicate_pairs(source)
            held_out: PromptResponsePairs | None
            if site.evaluate:
                train, held_out = split_pairs(distinct, eval_fraction=site.eval_fraction, seed=site.split_seed)
            else:
                train, held_out = distinct, None
            if len(_data) >= _MAX_CACHED_SITES:
                _data.pop(next(iter(_data)))
            max_length = config.training.max_length
            _data[key] = SitePairs(
                source=source,
                train_pairs=train,
                train=tokenize_pairs(train, tokenizer, max_length=max_length),
                eval=tokenize_pairs(held_out, tokenizer, max_length=max_length) if held_out is not None else None,
                duplicates=duplicates,
                dataset_id=f"{site.site_name}:{path.name}",
            )
        return _data[key]
