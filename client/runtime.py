"""What a site keeps loaded between rounds: the base model with its LoRA adapter, and its tokenised data.

A Flower simulation runs ClientApps in long-lived worker processes, so caching the model and data per process
turns each round into pure training work; a deployed SuperNode starts a fresh process per round and simply
misses the cache. The cache never holds privacy state: budget decisions always re-read the ledger.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.data.dataset import LabeledTexts
from common.data.dedupe import deduplicate
from common.data.readers import read_labeled_file
from common.data.split import train_eval_split
from common.federation.config import FederationConfig
from common.federation.site import SiteSettings
from common.model.adapter import trainable_keys
from common.model.loading import load_base_classifier, load_tokenizer, resolve_base_model
from common.model.lora import apply_lora
from common.training.batches import TokenizedTexts

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedTokenizerBase

_lock = threading.Lock()
_MAX_CACHED_SITES = 32  # one worker process may serve many simulated sites in turn


@dataclass(frozen=True)
class SiteData:
    """A site's data: the file as read, the part it trains on, and the part it holds out.

    ``train`` is every distinct record (duplicates dropped, see :mod:`common.data.dedupe`) unless the site releases
    held-out metrics, in which case a seeded split of them is held out as ``eval``. The file is read with the
    site's own label set (:meth:`SiteSettings.data_spec`), so ``source.label_names`` IS that set: a server's labels
    never decide what the site's records mean.
    """

    source: LabeledTexts
    train: TokenizedTexts
    eval: TokenizedTexts | None
    duplicates: int
    dataset_id: str


@dataclass(frozen=True)
class SiteModel:
    """The base model with the run's LoRA adapter, its tokenizer, and the adapter keys training changes."""

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    trainable: frozenset[str]


_models: dict[tuple[object, ...], SiteModel] = {}
_sources: dict[tuple[object, ...], LabeledTexts] = {}
_data: dict[tuple[object, ...], SiteData] = {}


def site_model(config: FederationConfig) -> SiteModel:
    """The model for this run's base model, LoRA settings and labels (its adapter is overwritten every round)."""
    key = (config.model, config.pooling, config.labels, config.lora)
    with _lock:
        if key not in _models:
            ref = resolve_base_model(config.model)
            model = apply_lora(load_base_classifier(ref, config.labels, pooling=config.pooling), config.lora)
            _models.clear()  # one model per process: free the previous run's
            _models[key] = SiteModel(model=model, tokenizer=load_tokenizer(ref), trainable=trainable_keys(model))
        return _models[key]


def site_source(site: SiteSettings) -> LabeledTexts:
    """The site's data file, read and validated with the site's own label set (re-read when the file changes)."""
    path = Path(site.data_path)
    key = (str(path), file_state(path), site.data_spec().model_dump_json())
    with _lock:
        if key not in _sources:
            if len(_sources) >= _MAX_CACHED_SITES:
                _sources.pop(next(iter(_sources)))
            _sources[key] = read_labeled_file(path, site.data_spec())
        return _sources[key]


def labels_problem(site: SiteSettings, config: FederationConfig) -> str | None:
    """Why the site cannot train or evaluate under the run's labels, or None if they equal its own label set.

    Names AND order must match: the model's class ``i`` is the run's ``labels[i]``, and a server that renamed,
    reordered, added or dropped labels would make the site's records mean something else (and, before per-record
    budgets, bought a fresh budget). Checked before the run's model is even loaded.
    """
    own = site_source(site).label_names
    if config.labels == own:
        return None
    return (
        f"the server's labels {list(config.labels)} differ from this site's label set {list(own)} "
        f"(data {site.data_path}); names and order must be equal"
    )


def site_data(site: SiteSettings, config: FederationConfig, tokenizer: PreTrainedTokenizerBase) -> SiteData:
    """The site's validated, tokenised data (re-read when the file changes)."""
    path = Path(site.data_path)
    source = site_source(site)
    key = (str(path), file_state(path), site.model_dump_json(), config.training.max_length, config.model)
    with _lock:
        if key not in _data:
            distinct, duplicates = deduplicate(source)
            train: LabeledTexts
            held_out: LabeledTexts | None
            if site.evaluate:
                train, held_out = train_eval_split(distinct, eval_fraction=site.eval_fraction, seed=site.split_seed)
            else:
                train, held_out = distinct, None
            if len(_data) >= _MAX_CACHED_SITES:
                _data.pop(next(iter(_data)))
            _data[key] = SiteData(
                source=source,
                train=TokenizedTexts(train, tokenizer, max_length=config.training.max_length),
                eval=TokenizedTexts(held_out, tokenizer, max_length=config.training.max_length) if held_out else None,
                duplicates=duplicates,
                dataset_id=f"{site.site_name}:{path.name}",
            )
        return _data[key]


def file_state(path: Path) -> tuple[int, int] | None:
    """Size and modification time: a changed file is read again."""
    stat = path.stat() if path.exists() else None
    return stat and (stat.st_size, stat.st_mtime_ns)
