"""Options of a federated run, shared by ``fedtune simulate`` and ``fedtune server start``.

Declared once (``Annotated`` aliases with defaults taken from :class:`FederationConfig`) and turned into the frozen
config by :func:`federation_config`, so both commands spell, document and validate a run the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

from common.federation.config import FederationConfig, parse_run_config

#: The run's defaults, as the config model declares them (``DEFAULTS.training.batch_size`` ...).
DEFAULTS = FederationConfig()

RoundsOpt = Annotated[int, typer.Option("--rounds", help="Federated rounds.")]
StrategyOpt = Annotated[
    str, typer.Option("--strategy", help="fedavg (A, B averaged), ffa (FFA-LoRA, exact), product (SVD of mean BA).")
]
RunEpsilonOpt = Annotated[
    float, typer.Option("--epsilon", help="Target epsilon per site for this run (each site calibrates sigma to it).")
]
LocalEpochsOpt = Annotated[int, typer.Option("--local-epochs", help="Local passes per round.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Expected logical batch per site.")]
LrOpt = Annotated[float, typer.Option("--lr", help="Local learning rate.")]
MaxLengthOpt = Annotated[int, typer.Option("--max-length", help="Tokens kept per text.")]
SitesPerRoundOpt = Annotated[
    int, typer.Option("--sites-per-round", help="Sites sampled per round (0 = all that still have budget).")
]
MinSitesOpt = Annotated[int, typer.Option("--min-sites", help="Fewest valid updates a round needs.")]
MaxUpdateNormOpt = Annotated[
    float, typer.Option("--max-update-norm", help="Reject site updates whose L2 change exceeds this.")
]
FederatedEvalOpt = Annotated[
    bool,
    typer.Option("--federated-eval/--no-federated-eval", help="Ask sites that opted in for held-out metrics (not DP)."),
]
UploadPrecisionOpt = Annotated[
    str, typer.Option("--upload-precision", help="float16 (half the bytes) or float32 for site uploads.")
]


#: The options both commands declare: the command's parameter name -> the run-config key it sets. The option's flag is
#: the parameter name with dashes (``federated_eval`` -> ``--federated-eval``), which is how errors name it.
SHARED_OPTIONS = {
    "model": "model",
    "pooling": "pooling",
    "strategy": "strategy",
    "rounds": "num-rounds",
    "sites_per_round": "sites-per-round",
    "min_sites": "min-sites",
    "local_epochs": "local-epochs",
    "batch_size": "batch-size",
    "lr": "learning-rate",
    "max_length": "max-length",
    "lora_r": "lora-r",
    "lora_alpha": "lora-alpha",
    "max_grad_norm": "max-grad-norm",
    "epsilon": "target-epsilon",
    "delta": "delta",
    "max_update_norm": "max-update-norm",
    "federated_eval": "federated-evaluation",
    "upload_precision": "upload-precision",
}


def federation_config(options: Mapping[str, Any], run_config: Mapping[str, Any]) -> FederationConfig:
    """FederationConfig from a command's parameters and the values it sets itself; errors name the option.

    ``options`` holds the shared options by parameter name (a command passes its ``locals()``); ``run_config`` the
    command's own values by run-config name (labels, out-dir, seed...). Everything is validated here, once.
    """
    values = {key: options[parameter] for parameter, key in SHARED_OPTIONS.items()} | dict(run_config)
    names = {key: "--" + parameter.replace("_", "-") for parameter, key in SHARED_OPTIONS.items()}
    names.update({key: f"--{key}" for key in run_config})
    return parse_run_config(values, context="option", names=names)
