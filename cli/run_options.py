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

from cli.options import DeltaOpt, LoraAlphaOpt, LoraROpt, ModelOpt, PoolingOpt
from common.federation.config import GENERATE_DEFAULTS, FederationConfig, parse_run_config
from common.model.task import ModelTask, resolve_task

#: The run's defaults, as the config model declares them (``DEFAULTS.training.batch_size`` ...).
DEFAULTS = FederationConfig()

RoundsOpt = Annotated[int, typer.Option("--rounds", help="Federated rounds.")]
StrategyOpt = Annotated[
    str, typer.Option("--strategy", help="fedavg (A, B averaged), ffa (FFA-LoRA, exact), product (SVD of mean BA).")
]
RunEpsilonOpt = Annotated[
    float, typer.Option("--epsilon", help="Target epsilon per site for this run (each site calibrates sigma to it).")
]
LocalEpochsOpt = Annotated[int, typer.Option("--local-epochs", help="Local passes per round (0: the recipe's).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Expected logical batch per site (0: the recipe's).")]
LrOpt = Annotated[float, typer.Option("--lr", help="Local learning rate (0: the recipe's).")]
RunClipOpt = Annotated[float, typer.Option("--max-grad-norm", help="Per-example clip C (0: the recipe's).")]
RecipeOpt = Annotated[
    str,
    typer.Option(
        "--recipe",
        help=(
            "auto: each site chooses the settings left at 0 (batch, local epochs, lr, clip) from its number of "
            "examples, epsilon, delta, rounds and the model's size, and logs why; none: every one must be given."
        ),
    ),
]
LrScheduleOpt = Annotated[
    str, typer.Option("--lr-schedule", help="constant, linear or cosine decay over all rounds' local steps.")
]
WarmupOpt = Annotated[float, typer.Option("--warmup-fraction", help="Share of the steps that warm the lr up.")]
ClassWeightsOpt = Annotated[
    str,
    typer.Option(
        "--class-weights",
        help=(
            "none, balanced (from a DP-noised label histogram each site releases and charges to its ledger before "
            "training) or W1,W2,... (one per label)."
        ),
    ),
]
StrictDataOpt = Annotated[
    bool,
    typer.Option(
        "--strict-data/--lenient-data",
        help="Refuse (instead of warn about) data the model's tokenizer covers badly or --max-length cuts often.",
    ),
]
MaxLengthOpt = Annotated[
    int | None, typer.Option("--max-length", help="Tokens kept per example. Default: 64 classify, 256 generate.")
]
TaskOpt = Annotated[
    str,
    typer.Option(
        "--task",
        help=(
            "classify (labelled text) or generate (instruction -> response SFT of a causal LM, from prompt/response "
            "pairs). Default auto: from the model's config."
        ),
    ),
]
MaxTokensOpt = Annotated[
    int, typer.Option("--max-tokens", help="generate: padded tokens per physical batch at each site (memory bound).")
]
MaxNewTokensOpt = Annotated[
    int, typer.Option("--max-new-tokens", help="generate: most tokens a server-side evaluation generation adds.")
]
EvalGenerationsOpt = Annotated[
    int,
    typer.Option(
        "--eval-generations",
        help="generate: held-out prompts the server generates from per round (ROUGE-L, BLEU, exact match).",
    ),
]
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

ServerOptimizerOpt = Annotated[
    str,
    typer.Option(
        "--server-optimizer",
        help=(
            "How the server applies the round's aggregate, as a pseudo-gradient (Reddi et al. 2021): sgd (with "
            "--server-lr 1: plain averaging), momentum, adam or yogi. Post-processing of DP updates: no privacy cost."
        ),
    ),
]
ServerLrOpt = Annotated[
    float,
    typer.Option("--server-lr", help="Server optimiser's learning rate (0: 1 for sgd/momentum, 0.01 for adam/yogi)."),
]
ServerMomentumOpt = Annotated[float, typer.Option("--server-momentum", help="Server momentum (momentum), in [0, 1).")]
ServerBeta1Opt = Annotated[float, typer.Option("--server-beta1", help="First-moment decay of adam/yogi, in [0, 1).")]
ServerBeta2Opt = Annotated[float, typer.Option("--server-beta2", help="Second-moment decay of adam/yogi, in [0, 1).")]
ServerTauOpt = Annotated[
    float, typer.Option("--server-tau", help="Adaptivity of adam/yogi (added to sqrt(v); Reddi et al.'s tau).")
]
SelectMetricOpt = Annotated[
    str | None,
    typer.Option(
        "--select-metric",
        help=(
            "Keep the adapter of the round best by this metric on the server's held-out data (--eval-data): "
            "accuracy, macro_f1 (highest) or loss (lowest). Default: accuracy classify, loss generate. "
            "Server-owned data: no site privacy spent."
        ),
    ),
]
PatienceOpt = Annotated[
    int,
    typer.Option(
        "--patience",
        help="Stop after this many rounds without improvement of --select-metric (0: never; needs --eval-data).",
    ),
]

#: The options both commands declare: the command's parameter name -> (its option, the run-config key it sets). The
#: option's flag is the parameter name with dashes (``federated_eval`` -> ``--federated-eval``), which is how errors
#: name it; its default is :data:`DEFAULTS`' value for the key.
SHARED_OPTIONS: dict[str, tuple[Any, str]] = {
    "model": (ModelOpt, "model"),
    "task": (TaskOpt, "task"),
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
    "max_grad_norm": (RunClipOpt, "max-grad-norm"),
    "recipe": (RecipeOpt, "recipe"),
    "lr_schedule": (LrScheduleOpt, "lr-schedule"),
    "warmup_fraction": (WarmupOpt, "warmup-fraction"),
    "class_weights": (ClassWeightsOpt, "class-weights"),
    "strict_data": (StrictDataOpt, "strict-data"),
    "epsilon": (RunEpsilonOpt, "target-epsilon"),
    "delta": (DeltaOpt, "delta"),
    "max_update_norm": (MaxUpdateNormOpt, "max-update-norm"),
    "federated_eval": (FederatedEvalOpt, "federated-evaluation"),
    "upload_precision": (UploadPrecisionOpt, "upload-precision"),
    "max_site_weight": (MaxSiteWeightOpt, "max-site-weight"),
    "weighting": (WeightingOpt, "weighting"),
    "server_optimizer": (ServerOptimizerOpt, "server-optimizer"),
    "server_lr": (ServerLrOpt, "server-lr"),
    "server_momentum": (ServerMomentumOpt, "server-momentum"),
    "server_beta1": (ServerBeta1Opt, "server-beta1"),
    "server_beta2": (ServerBeta2Opt, "server-beta2"),
    "server_tau": (ServerTauOpt, "server-tau"),
    "select_metric": (SelectMetricOpt, "select-metric"),
    "patience": (PatienceOpt, "patience"),
    "max_tokens": (MaxTokensOpt, "max-tokens"),
    "max_new_tokens": (MaxNewTokensOpt, "max-new-tokens"),
    "eval_generations": (EvalGenerationsOpt, "eval-generations"),
}
#: Options whose default depends on the task (:data:`~common.federation.config.GENERATE_DEFAULTS`): None on the
#: command line means "the task's default".
TASK_DEFAULTED = frozenset(GENERATE_DEFAULTS)

RunOptions = dict[str, Any]
"""The shared options' values by run-config key, as a command decorated with :func:`with_run_options` receives them."""


def with_run_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add the shared run options to a Typer command, which receives their values as ``run: RunOptions``.

    Typer reads a command's options from its signature: the wrapper's signature is the command's own parameters
    (without ``run``) followed by the shared options, keyword-only, each with the config model's default.
    """
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "run"]
    defaults: dict[str, object] = {**DEFAULTS.to_run_config(), **dict.fromkeys(TASK_DEFAULTED)}
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
    given = {key: value for key, value in {**run, **values}.items() if value is not None}
    given["task"] = run_task(run)  # resolved here, once: the sites receive the concrete task
    return parse_run_config(given, context="option", names=names)


def run_task(run: RunOptions) -> ModelTask:
    """The run's concrete task: ``--task``, or for ``auto`` what ``--model``'s config says."""
    return resolve_task(str(run.get("task", "auto")), str(run.get("model", DEFAULTS.model)))
