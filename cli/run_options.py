"""Options of a federated run, shared by ``fedtune simulate`` and ``fedtune server start``.

Declared once (:data:`SHARED_OPTIONS`: the ``Annotated`` option, its run-config key; the default is the config
model's), added to both commands by :func:`with_run_options`, and turned into the frozen config by
:func:`federation_config`, so both commands spell, document, default and validate a run the same way.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Annotated, Any

import typer

from cli.options import ClipOpt, DeltaOpt, LoraAlphaOpt, LoraROpt, ModelOpt, PoolingOpt
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
MaxSiteWeightOpt = Annotated[
    float,
    typer.Option(
        "--max-site-weight",
        help=(
            "Largest share of a round's total weight one site may have, in (0, 1]; a site above it is rejected and "
            "excluded. Default 0.5: above half, one site alone decides the aggregate. Two honest sites of unequal "
            "size need more (or --weighting uniform)."
        ),
    ),
]
WeightingOpt = Annotated[
    str,
    typer.Option("--weighting", help="examples (weight updates by each site's num-examples) or uniform (equally)."),
]


#: The options both commands declare: the command's parameter name -> (its option, the run-config key it sets). The
#: option's flag is the parameter name with dashes (``federated_eval`` -> ``--federated-eval``), which is how errors
#: name it; its default is :data:`DEFAULTS`' value for the key.
SHARED_OPTIONS: dict[str, tuple[Any, str]] = {
    "model": (ModelOpt, "model"),
    "pooling": (PoolingOpt, "pooling"),
    "strategy": (StrategyOpt, "strategy"),
    "rounds": (RoundsOpt, "num-rounds"),
    "sites_per_round": (SitesPerRoundOpt, "sites-per-round"),
    "min_sites": (MinSitesOpt, "min-sites"),
    "local_epochs": (LocalEpochsOpt, "local-epochs"),
    "batch_size": (BatchOpt, "batch-size"),
    "lr": (LrOpt, "learning-rate"),
    "max_length": (MaxLengthOpt, "max-length"),
    "lora_r": (LoraROpt, "lora-r"),
    "lora_alpha": (LoraAlphaOpt, "lora-alpha"),
    "max_grad_norm": (ClipOpt, "max-grad-norm"),
    "epsilon": (RunEpsilonOpt, "target-epsilon"),
    "delta": (DeltaOpt, "delta"),
    "max_update_norm": (MaxUpdateNormOpt, "max-update-norm"),
    "federated_eval": (FederatedEvalOpt, "federated-evaluation"),
    "upload_precision": (UploadPrecisionOpt, "upload-precision"),
    "max_site_weight": (MaxSiteWeightOpt, "max-site-weight"),
    "weighting": (WeightingOpt, "weighting"),
}

RunOptions = dict[str, Any]
"""The shared options' values by run-config key, as a command decorated with :func:`with_run_options` receives them."""


def with_run_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add the shared run options to a Typer command, which receives their values as ``run: RunOptions``.

    Typer reads a command's options from its signature: the wrapper's signature is the command's own parameters
    (without ``run``) followed by the shared options, keyword-only, each with the config model's default.
    """
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "run"]
    defaults = DEFAULTS.to_run_config()
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=defaults[key], annotation=option)
        for name, (option, key) in SHARED_OPTIONS.items()
    ]

    @functools.wraps(command)
    def wrapper(**values: Any) -> None:
        run = {key: values.pop(name) for name, (_, key) in SHARED_OPTIONS.items()}
        command(**values, run=run)

    wrapper.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    return wrapper


def federation_config(run: RunOptions, values: Mapping[str, Any]) -> FederationConfig:
    """FederationConfig from the shared options and the values a command sets itself; errors name the option.

    ``values`` holds the command's own settings by run-config key (labels, out-dir, seed...). Everything is validated
    here, once.
    """
    names = {key: "--" + name.replace("_", "-") for name, (_, key) in SHARED_OPTIONS.items()}
    names.update({key: f"--{key}" for key in values})
    return parse_run_config({**run, **values}, context="option", names=names)
