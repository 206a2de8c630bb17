"""Options of a federated run, shared by ``fedtune simulate`` and ``fedtune server start``.

Declared once (``Annotated`` aliases with defaults taken from :class:`FederationConfig`) and turned into the frozen
config by :func:`federation_config`, so both commands spell, document and validate a run the same way.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from common.federation.config import FederationConfig
from common.parsing import parse_settings

DEFAULTS = FederationConfig(labels=("a", "b"))

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


def federation_config(values: dict[str, Any]) -> FederationConfig:
    """FederationConfig from CLI values keyed by run-config names (``num-rounds``...), naming options in errors."""
    names = {
        "num-rounds": "--rounds",
        "target-epsilon": "--epsilon",
        "learning-rate": "--lr",
        "federated-evaluation": "--federated-eval",
    }
    names.update({key: f"--{key}" for key in values if key not in names})
    return parse_settings(FederationConfig, values, context="option", names=names)
