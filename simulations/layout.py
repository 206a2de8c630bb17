"""Lay out a simulation's run directory: read and validate the data, carve the sites, write their files and table.

Nothing here trains. ``read_sources`` reads and validates every input (or the saved run, on resume) and writes
nothing; ``prepare`` partitions the data, previews each site's recipe (refusing a site whose data cannot support its
batch) and writes the site files, the site table and the run config. A classify run's sites hold labelled texts, a
generate run's prompt/response pairs (written as ``prompt``/``response`` columns, chat records as ``messages``); the
layout is otherwise the same.

Run directory::

    OUT/run_config.json  sites.json  adapter/  metrics.json  privacy_report.json  progress.png  checkpoints/
    OUT/server/eval.jsonl          (the server's held-out data: --eval-data, or a split of --data)
    OUT/sites/site-K/train.jsonl   ledger.jsonl (+ .head)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from common.data.dataset import LabeledTexts
from common.data.pair_split import partition_pairs, split_pairs
from common.data.pairs import PairSpec, PromptResponsePairs
from common.data.partition import PartitionSpec, partition_dataset
from common.data.readers import read_labeled_file
from common.data.sample import sample_dataset
from common.data.spec import DataSpec
from common.data.split import train_eval_split
from common.errors import ConfigError
from common.federation.config import FederationConfig, parse_run_config
from common.federation.site import EVALUATE_ALL, SiteSettings
from common.fileio import atomic_write_bytes, atomic_write_json
from common.model.task import ModelTask
from common.training.config import DEFAULT_EVAL_FRACTION
from common.training.recipe import MIN_BATCH
from simulations.preview import coverage_lines, lora_fan_in, recipe_line

SITES_FILE = "sites.json"
RUN_CONFIG_FILE = "run_config.json"
SERVER_EVAL_FILE = "server/eval.jsonl"

#: A site's data: labelled texts (classify) or prompt/response pairs (generate).
SiteDataset = LabeledTexts | PromptResponsePairs


class SimulationRequest(BaseModel):
    """What ``fedtune simulate`` was asked to do (validated once, at the CLI)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: Path | None = None
    eval_data: Path | None = None
    site_data: tuple[Path, ...] = ()
    sites: int = Field(default=4, ge=1)
    partition: str = "iid"
    task: ModelTask = "classify"  # resolved by the caller (``auto`` is the model's config's business)
    data_spec: DataSpec = DataSpec()
    pair_spec: PairSpec = PairSpec()
    site_max_epsilon: float | None = None  # default: the run's target epsilon
    resume: bool = False
    cpus_per_site: float | None = None
    gpus_per_site: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class SimulationSources:
    """The validated data of a simulation, before any partition or write: what decides the run's label set.

    ``site_sets`` holds one dataset per site (``--site-data``) or, with ``pooled``, the single pool to carve
    (``--data``); ``server_eval`` is the server's held-out data (None with a pool: split from it); ``resumed`` is the
    saved run config of a run being resumed (its data are already laid out). A generate run's datasets are pairs and
    its ``labels`` are unused.
    """

    labels: tuple[str, ...]
    site_sets: tuple[SiteDataset, ...] = ()
    pooled: bool = False
    server_eval: SiteDataset | None = None
    resumed: FederationConfig | None = None
    task: ModelTask = "classify"

    def run_config_values(self, out: Path) -> dict[str, object]:
        """What the sources decide in the run config: the task, the label set and the server's held-out file."""
        if self.resumed is not None:
            return {"labels": self.resumed.labels, "eval-data": self.resumed.eval_data, "task": self.resumed.task}
        held_out = self.server_eval is not None or self.pooled
        values: dict[str, object] = {
            "task": self.task,
            "eval-data": str((out / SERVER_EVAL_FILE).resolve()) if held_out else "",
        }
        if self.task == "classify":
            values["labels"] = self.labels
        return values


@dataclass(frozen=True)
class PreparedSimulation:
    """A laid-out run directory ready to run."""

    config: FederationConfig
    sites: dict[int, SiteSettings]
    sites_file: Path
    recipe_lines: tuple[str, ...] = ()  # each site's recipe and coverage warnings, as the sites will log them


def read_sources(request: SimulationRequest, out: Path) -> SimulationSources:
    """Read and validate every data file (or the saved run, on resume); nothing is written."""
    if request.resume:
        if not (out / SITES_FILE).exists():
            raise ConfigError(f"{out}: nothing to resume (no {SITES_FILE}); run without --resume first")
        saved = parse_run_config(json.loads((out / RUN_CONFIG_FILE).read_text()), context=str(out / RUN_CONFIG_FILE))
        return SimulationSources(labels=saved.labels, resumed=saved, task=request.task)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: output directory exists and is not empty; choose a new --out (or --resume)")
    if request.site_data and request.data is not None:
        raise ConfigError("give --data (carved into sites) or --site-data (one file per site), not both")
    if request.task == "generate":
        return _read_pair_sources(request)
    spec = request.data_spec
    if request.site_data:
        labels = read_labeled_file(request.site_data[0], spec).label_names
        site_sets = tuple(read_labeled_file(path, spec, label_names=labels) for path in request.site_data)
    else:
        pool = read_labeled_file(request.data, spec) if request.data is not None else sample_dataset()
        labels, site_sets = pool.label_names, (pool,)
    server_eval = read_labeled_file(request.eval_data, spec, label_names=labels) if request.eval_data else None
    return SimulationSources(labels=labels, site_sets=site_sets, pooled=not request.site_data, server_eval=server_eval)


def _read_pair_sources(request: SimulationRequest) -> SimulationSources:
    """A generate run's pairs: ``--site-data`` files, or the ``--data`` pool (default: the built-in instructions)."""
    from common.data.instructions import instruction_dataset
    from common.data.pairs import read_pairs_file

    spec = request.pair_spec
    if request.site_data:
        site_sets: tuple[SiteDataset, ...] = tuple(read_pairs_file(path, spec) for path in request.site_data)
    else:
        site_sets = (read_pairs_file(request.data, spec) if request.data is not None else instruction_dataset(),)
    server_eval = read_pairs_file(request.eval_data, spec) if request.eval_data else None
    return SimulationSources(
        labels=(), site_sets=site_sets, pooled=not request.site_data, server_eval=server_eval, task="generate"
    )


def prepare(request: SimulationRequest, config: FederationConfig, sources: SimulationSources) -> PreparedSimulation:
    """Partition the data and lay out the run directory (nothing trains here)."""
    out = Path(config.out_dir)
    if sources.resumed is not None:
        return _reload(out, config)
    site_sets = list(sources.site_sets)
    server_eval = sources.server_eval
    if sources.pooled:
        pool = site_sets[0]
        if server_eval is None:
            pool, server_eval = _split(pool, seed=config.seed)
        spec, min_size = PartitionSpec.parse(request.partition), config.training.batch_size or MIN_BATCH
        site_sets = _partition(pool, sites=request.sites, spec=spec, seed=config.seed, min_size=min_size)
    if len(site_sets) < config.min_sites:
        raise ConfigError(f"{len(site_sets)} site(s) cannot satisfy min-sites {config.min_sites}")
    sites: dict[int, SiteSettings] = {}
    sizes: dict[int, int] = {}
    fan_in = lora_fan_in(config)
    lines: list[str] = []
    for index, dataset in enumerate(site_sets):
        directory = out / "sites" / f"site-{index}"
        data_path = request.site_data[index] if request.site_data else directory / "train.jsonl"
        site = SiteSettings(
            site_name=f"site-{index}",
            task=sources.task,
            data_path=Path(data_path).resolve(),
            ledger_path=(directory / "ledger.jsonl").resolve(),
            max_epsilon=request.site_max_epsilon if request.site_max_epsilon is not None else config.target_epsilon,
            delta=config.delta,
            text_column=request.data_spec.text_column,
            label_column=request.data_spec.label_column,
            prompt_column=request.pair_spec.prompt_column,
            response_column=request.pair_spec.response_column,
            labels=config.labels if sources.task == "classify" else None,  # the operator declares the label set
            # Simulated sites release held-out metrics (so progress is visible) whenever federated evaluation is on.
            release_metrics=EVALUATE_ALL if config.federated_evaluation else (),
            seed=None if request.seed is None else request.seed * 1000 + index,
        )
        distinct = len(_distinct(dataset))  # what the site will train on: duplicates dropped, a split held out
        train_size = distinct - (round(distinct * site.eval_fraction) if site.evaluate else 0)
        lines.append(recipe_line(site, train_size, config, lora_a_fan_in=fan_in))
        sizes[index] = train_size
        sites[index] = site
    lines += weight_lines(sizes, config)
    lines += coverage_lines(sources.site_sets, config)
    if server_eval is not None and config.eval_data:
        _write_jsonl(Path(config.eval_data), server_eval)  # read_sources named the file; the server's own columns
    if sources.pooled:
        for index, dataset in enumerate(site_sets):
            _write_jsonl(sites[index].data_path, dataset, request)
    sites_file = out / SITES_FILE
    atomic_write_json(sites_file, {str(k): s.to_node_config() for k, s in sites.items()})
    atomic_write_json(out / RUN_CONFIG_FILE, config.to_run_config())
    return PreparedSimulation(config=config, sites=sites, sites_file=sites_file, recipe_lines=tuple(lines))


def prepare_simulation(request: SimulationRequest, out: Path, settings: Mapping[str, Any]) -> PreparedSimulation:
    """``read_sources``, the run config (``settings`` by run-config key, over what the data decide), ``prepare``.

    The programmatic form of ``fedtune simulate`` (benchmarks use it); the CLI does the same with option names.
    """
    sources = read_sources(request, out)
    values = {**sources.run_config_values(out), "out-dir": str(out), **settings}
    return prepare(request, parse_run_config(values), sources)


def weight_lines(sizes: Mapping[int, int], config: FederationConfig) -> list[str]:
    """Warnings for sites whose share of a full round's weight is above ``max-site-weight``.

    The server rejects (and excludes) such a site's update: that protects a real federation from a site claiming a
    huge N, but in a simulation it is usually an accident of the split (two sites one record apart after
    deduplication), so the operator is told before anything trains.
    """
    total = sum(sizes.values())
    if config.weighting != "examples" or not total:
        return []
    return [
        f"warning: site-{index} holds {size / total:.1%} of a full round's examples, above --max-site-weight "
        f"{config.max_site_weight:g}: the server will reject its update (use --weighting uniform or raise "
        "--max-site-weight)"
        for index, size in sizes.items()
        if size / total > config.max_site_weight
    ]


def _distinct(dataset: SiteDataset) -> SiteDataset:
    """``dataset`` without duplicate records, as a site reads it (:mod:`common.data.dedupe`)."""
    from common.data.dedupe import deduplicate
    from common.data.pairs import deduplicate_pairs

    if isinstance(dataset, PromptResponsePairs):
        return deduplicate_pairs(dataset)[0]
    return deduplicate(dataset)[0]


def _split(pool: SiteDataset, *, seed: int) -> tuple[SiteDataset, SiteDataset]:
    """(sites' pool, server's held-out data): a seeded split of the default evaluation fraction."""
    if isinstance(pool, PromptResponsePairs):
        return split_pairs(pool, eval_fraction=DEFAULT_EVAL_FRACTION, seed=seed)
    return train_eval_split(pool, eval_fraction=DEFAULT_EVAL_FRACTION, seed=seed)


def _partition(pool: SiteDataset, *, sites: int, spec: PartitionSpec, seed: int, min_size: int) -> list[SiteDataset]:
    if isinstance(pool, PromptResponsePairs):
        return list(partition_pairs(pool, sites=sites, spec=spec, seed=seed, min_size=min_size))
    return list(partition_dataset(pool, sites=sites, spec=spec, seed=seed, min_size=min_size))


def _write_jsonl(path: Path, dataset: SiteDataset, request: SimulationRequest | None = None) -> Path:
    """``dataset`` as JSON Lines, with the request's columns for a site's file (None: the default columns)."""
    if isinstance(dataset, PromptResponsePairs):
        pair_spec = request.pair_spec if request is not None else PairSpec()
        rows = [_pair_row(dataset, i, pair_spec) for i in range(len(dataset))]
    else:
        data_spec = request.data_spec if request is not None else DataSpec()
        rows = [
            {data_spec.text_column: text, data_spec.label_column: dataset.label_names[label]}
            for text, label in zip(dataset.texts, dataset.labels, strict=True)
        ]
    atomic_write_bytes(path, ("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n").encode())
    return path


def _pair_row(pairs: PromptResponsePairs, index: int, spec: PairSpec) -> dict[str, object]:
    """One record as the pairs reader reads it back: prompt/response columns, or the chat turns plus the reply."""
    turns, response = pairs.turns[index], pairs.responses[index]
    if turns is None:
        return {spec.prompt_column: pairs.prompts[index], spec.response_column: response}
    messages = [{"role": role, "content": content} for role, content in turns]
    return {spec.messages_column: [*messages, {"role": "assistant", "content": response}]}


def _reload(out: Path, config: FederationConfig) -> PreparedSimulation:
    from common.federation.site import parse_site_settings

    table = json.loads((out / SITES_FILE).read_text())
    sites = {int(k): parse_site_settings(v, source=f"{out / SITES_FILE} site {k}") for k, v in table.items()}
    return PreparedSimulation(config=config, sites=sites, sites_file=out / SITES_FILE)
