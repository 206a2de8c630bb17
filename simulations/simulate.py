"""A local federation on Flower's simulation engine (Ray): sites carved from one dataset, or one file per site.

:mod:`simulations.layout` validates every input and lays out the run directory (site data, site table, run config)
before anything trains; ``run_simulation`` executes fedtune's own ServerApp and ClientApp under ``flwr.simulation``
and returns how the run ended. The simulated sites are configured exactly like deployed ones (node-config settings:
data path, ledger, limit, delta), so each keeps its own ledger under ``OUT/sites/``.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common.errors import FederationError
from common.federation.config import parse_run_config
from common.federation.rounds import FederationResult, RoundRecord
from simulations.layout import (
    RUN_CONFIG_FILE,
    SERVER_EVAL_FILE,
    SITES_FILE,
    PreparedSimulation,
    SimulationRequest,
    SimulationSources,
    prepare,
    prepare_simulation,
    read_sources,
)

__all__ = [
    "RUN_CONFIG_FILE",
    "SERVER_EVAL_FILE",
    "SITES_FILE",
    "PreparedSimulation",
    "SimulationRequest",
    "SimulationSources",
    "prepare",
    "prepare_simulation",
    "read_sources",
    "run_simulation",
]


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
