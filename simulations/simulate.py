"""A local federation on Flower's simulation engine (Ray): sites carved from one dataset, or one file per site.

``prepare`` validates every input and lays out the run directory (site data, site table, run config) before
anything trains; ``run`` executes fedtune's own ServerApp and ClientApp under ``flwr.simulation`` and returns how the
run ended. The simulated sites are configured exactly like deployed ones (node-config settings: data path, ledger,
limit, delta), so each keeps its own ledger under ``OUT/sites/``.

Run directory::

    OUT/run_config.json  sites.json  adapter/  metrics.json  privacy_report.json  progress.png  checkpoints/
    OUT/server/eval.jsonl          (held-out split when no --eval-data is given)
    OUT/sites/site-K/train.jsonl   ledger.jsonl (+ .head)
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from common.data.dataset import LabeledTexts
from common.data.partition import PartitionSpec, partition_dataset
from common.data.readers import read_labeled_file
from common.data.sample import sample_dataset
from common.data.spec import DataSpec
from common.data.split import train_eval_split
from common.errors import ConfigError, FederationError
from common.federation.config import FederationConfig, parse_run_config
from common.federation.rounds import FederationResult, RoundRecord
from common.federation.site import EVALUATE_ALL, SiteSettings
from common.fileio import atomic_write_bytes, atomic_write_json
from common.training.config import DEFAULT_EVAL_FRACTION
from common.training.recipe import MIN_BATCH
from simulations.preview import coverage_lines, recipe_line

SITES_FILE = "sites.json"
RUN_CONFIG_FILE = "run_config.json"
SERVER_EVAL_FILE = "server/eval.jsonl"


class SimulationRequest(BaseModel):
    """What ``fedtune simulate`` was asked to do (validated once, at the CLI)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: Path | None = None
    eval_data: Path | None = None
    site_data: tuple[Path, ...] = ()
    sites: int = Field(default=4, ge=1)
    partition: str = "iid"
    data_spec: DataSpec = DataSpec()
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
    saved run config of a run being resumed (its data are already laid out).
    """

    labels: tuple[str, ...]
    site_sets: tuple[LabeledTexts, ...] = ()
    pooled: bool = False
    server_eval: LabeledTexts | None = None
    resumed: FederationConfig | None = None

    def run_config_values(self, out: Path) -> dict[str, object]:
        """What the sources decide in the run config: the label set and the server's held-out file."""
        if self.resumed is not None:
            return {"labels": self.resumed.labels, "eval-data": self.resumed.eval_data}
        held_out = self.server_eval is not None or self.pooled
        return {"labels": self.labels, "eval-data": str((out / SERVER_EVAL_FILE).resolve()) if held_out else ""}


@dataclass(frozen=True)
class PreparedSimulation:
    """A laid-out run directory ready to run."""

    config: FederationConfig
    sites: dict[int, SiteSettings]
    sites_file: Path
    recipe_lines: tuple[str, ...] = ()  # each site's recipe and coverage warnings, as the sites will log them


def _write_jsonl(path: Path, dataset: LabeledTexts) -> Path:
    lines = [
        json.dumps({"text": text, "label": dataset.label_names[label]})
        for text, label in zip(dataset.texts, dataset.labels, strict=True)
    ]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


def read_sources(request: SimulationRequest, out: Path) -> SimulationSources:
    """Read and validate every data file (or the saved run, on resume); nothing is written."""
    if request.resume:
        if not (out / SITES_FILE).exists():
            raise ConfigError(f"{out}: nothing to resume (no {SITES_FILE}); run without --resume first")
        saved = parse_run_config(json.loads((out / RUN_CONFIG_FILE).read_text()), context=str(out / RUN_CONFIG_FILE))
        return SimulationSources(labels=saved.labels, resumed=saved)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: output directory exists and is not empty; choose a new --out (or --resume)")
    spec = request.data_spec
    if request.site_data:
        if request.data is not None:
            raise ConfigError("give --data (carved into sites) or --site-data (one file per site), not both")
        labels = read_labeled_file(request.site_data[0], spec).label_names
        site_sets = tuple(read_labeled_file(path, spec, label_names=labels) for path in request.site_data)
    else:
        pool = read_labeled_file(request.data, spec) if request.data is not None else sample_dataset()
        labels, site_sets = pool.label_names, (pool,)
    server_eval = read_labeled_file(request.eval_data, spec, label_names=labels) if request.eval_data else None
    return SimulationSources(labels=labels, site_sets=site_sets, pooled=not request.site_data, server_eval=server_eval)


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
            pool, server_eval = train_eval_split(pool, eval_fraction=DEFAULT_EVAL_FRACTION, seed=config.seed)
        site_sets = partition_dataset(
            pool,
            sites=request.sites,
            spec=PartitionSpec.parse(request.partition),
            seed=config.seed,
            min_size=config.training.batch_size or MIN_BATCH,
        )
    if len(site_sets) < config.min_sites:
        raise ConfigError(f"{len(site_sets)} site(s) cannot satisfy min-sites {config.min_sites}")
    sites: dict[int, SiteSettings] = {}
    lines: list[str] = []
    for index, dataset in enumerate(site_sets):
        directory = out / "sites" / f"site-{index}"
        data_path = request.site_data[index] if request.site_data else directory / "train.jsonl"
        site = SiteSettings(
            site_name=f"site-{index}",
            data_path=Path(data_path).resolve(),
            ledger_path=(directory / "ledger.jsonl").resolve(),
            max_epsilon=request.site_max_epsilon if request.site_max_epsilon is not None else config.target_epsilon,
            delta=config.delta,
            text_column=request.data_spec.text_column,
            label_column=request.data_spec.label_column,
            labels=config.labels,  # the simulation's operator declares each site's label set: the run's
            # Simulated sites release held-out metrics (so progress is visible) whenever federated evaluation is on.
            release_metrics=EVALUATE_ALL if config.federated_evaluation else (),
            seed=None if request.seed is None else request.seed * 1000 + index,
        )
        train_size = len(dataset) - (round(len(dataset) * site.eval_fraction) if site.evaluate else 0)
        lines.append(recipe_line(site, train_size, config))
        sites[index] = site
    lines += coverage_lines(sources.site_sets, config)
    if server_eval is not None and config.eval_data:
        _write_jsonl(Path(config.eval_data), server_eval)  # read_sources named the file
    if sources.pooled:
        for index, dataset in enumerate(site_sets):
            _write_jsonl(sites[index].data_path, dataset)
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


def _reload(out: Path, config: FederationConfig) -> PreparedSimulation:
    from common.federation.site import parse_site_settings

    table = json.loads((out / SITES_FILE).read_text())
    sites = {int(k): parse_site_settings(v, source=f"{out / SITES_FILE} site {k}") for k, v in table.items()}
    return PreparedSimulation(config=config, sites=sites, sites_file=out / SITES_FILE)


def run_simulation(
    prepared: PreparedSimulation,
    request: SimulationRequest,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> FederationResult:
    """Run the prepared federation on Flower's simulation engine; return the server's FederationResult."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp

    from client.site import SIMULATION_SITES_ENV
    from server.federation import run_federation
    from server.identities import IdentityTable

    holder: dict[str, FederationResult] = {}
    client_app = simulation_client_app(prepared.config.to_run_config())
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        holder["result"] = run_federation(grid, prepared.config, on_round=on_round)

    cpus = request.cpus_per_site or float(os.cpu_count() or 1)
    backend_config = {
        "client_resources": {"num_cpus": cpus, "num_gpus": request.gpus_per_site},
        "init_args": {"logging_level": logging.ERROR, "log_to_driver": False, "num_cpus": os.cpu_count() or 1},
    }
    # Ray workers inherit the environment: this is how simulated SuperNodes find their site settings.
    os.environ[SIMULATION_SITES_ENV] = str(prepared.sites_file.resolve())
    # This run's simulated nodes get new ids: they register again under their site names as they first reply.
    IdentityTable(Path(prepared.config.out_dir)).forget("simulation")
    try:
        with quiet_flower():
            from flwr.simulation import run_simulation as run_on_flower

            run_on_flower(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=len(prepared.sites),
                backend_config=backend_config,  # type: ignore[arg-type]
            )
    finally:
        os.environ.pop(SIMULATION_SITES_ENV, None)
        _shutdown_ray()
    if "result" not in holder:
        raise FederationError("the simulation ended without a result from the server (see the log above)")
    return holder["result"]


@contextmanager
def quiet_flower() -> Iterator[None]:
    """Keep Flower's and Ray's chatter off the console unless --debug (errors still show).

    The run_simulation deprecation notice is dropped: ``flwr run`` cannot take in-process apps with a progress hook,
    which is what this command needs; the API is still supported in Flower 1.41.
    """
    flower = logging.getLogger("flwr")
    previous = flower.level
    debug = logging.getLogger().level <= logging.DEBUG
    deprecation = _DropMessage("DEPRECATED FEATURE: The `run_simulation` function")
    flower.addFilter(deprecation)
    for handler in flower.handlers:
        handler.addFilter(deprecation)
    if not debug:
        flower.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
            yield
    finally:
        flower.setLevel(previous)
        flower.removeFilter(deprecation)
        for handler in flower.handlers:
            handler.removeFilter(deprecation)


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def simulation_client_app(run_config: dict[str, Any]) -> Any:
    """Fedtune's ClientApp handlers, with the run config that ``flwr.simulation`` does not pass to ClientApps.

    (``flwr run`` and deployed SuperNodes receive the run config from the SuperLink; the in-process simulation API
    leaves ``context.run_config`` empty.)
    """
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    from client.app import contained
    from client.evaluate import evaluate_round
    from client.site import resolve_site
    from client.train import train_round

    app = ClientApp()
    config = parse_run_config(run_config)

    def site_config(context: Context) -> Mapping[str, Any]:  # where a failing simulated site keeps its error log
        return resolve_site(context.node_config, config).to_node_config()

    train = contained(lambda message, context: train_round(message, context, run_config=run_config), sites=site_config)
    evaluate = contained(
        lambda message, context: evaluate_round(message, context, run_config=run_config), sites=site_config
    )

    @app.train()
    def _train(message: Message, context: Context) -> Message:
        register_simulated_site(context.node_id, context.node_config, run_config)
        return train(message, context)

    @app.evaluate()
    def _evaluate(message: Message, context: Context) -> Message:
        register_simulated_site(context.node_id, context.node_config, run_config)
        return evaluate(message, context)

    return app


def register_simulated_site(node_id: int, node_config: Mapping[str, Any], run_config: Mapping[str, Any]) -> None:
    """Name this simulated node in the run's identity table, first thing, before it can reply or crash.

    The operator's site table says which site this node's partition is; the server names the node from the table
    (:mod:`server.identities`), never from anything in a reply.
    """
    from client.site import resolve_site
    from server.identities import register_simulated_node

    config = parse_run_config(run_config)
    site = resolve_site(node_config, config)
    register_simulated_node(Path(config.out_dir), node_id, site.site_name)


def _shutdown_ray() -> None:
    """Leave no Ray process behind."""
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
