"""``fedtune simulate``: a whole federation on this machine, on Flower's simulation engine."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from common.cli import options as opt
from common.cli.display import console, fmt
from common.errors import FederationError
from common.federation.config import FederationConfig
from common.model.builtin import BUILTIN_MODEL_ID
from common.parsing import parse_settings
from common.privacy.budget import parse_limit
from common.training.config import DEFAULT_DELTA, DEFAULT_TARGET_EPSILON

_DEFAULTS = FederationConfig(labels=("a", "b"))


def simulate(
    data: Annotated[
        Path | None, typer.Option("--data", help="One dataset to carve into sites (default: the built-in sample).")
    ] = None,
    eval_data: Annotated[
        Path | None,
        typer.Option("--eval-data", help="Server-side held-out file (default: a 20% split of --data)."),
    ] = None,
    site_data: Annotated[
        list[Path] | None,
        typer.Option("--site-data", help="One data file per site (repeat the option); replaces --data/--sites."),
    ] = None,
    sites: Annotated[int, typer.Option("--sites", help="Number of simulated sites.")] = 4,
    partition: Annotated[
        str, typer.Option("--partition", help="How --data is carved: iid, dirichlet:ALPHA (label skew), size:RATIO.")
    ] = "iid",
    rounds: Annotated[int, typer.Option("--rounds", help="Federated rounds.")] = _DEFAULTS.num_rounds,
    strategy: Annotated[
        str, typer.Option("--strategy", help="fedavg (A, B averaged), ffa (FFA-LoRA, exact), product (SVD of mean BA).")
    ] = _DEFAULTS.strategy,
    model: opt.ModelOpt = BUILTIN_MODEL_ID,
    pooling: opt.PoolingOpt = "auto",
    epsilon: Annotated[
        float, typer.Option("--epsilon", help="Target epsilon per site for this run (sigma is calibrated to it).")
    ] = DEFAULT_TARGET_EPSILON,
    delta: opt.DeltaOpt = DEFAULT_DELTA,
    site_max_epsilon: Annotated[
        str | None,
        typer.Option("--site-max-epsilon", help="Each simulated site's lifetime limit (default: --epsilon)."),
    ] = None,
    max_grad_norm: opt.ClipOpt = _DEFAULTS.max_grad_norm,
    local_epochs: Annotated[int, typer.Option("--local-epochs", help="Local passes per round.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Expected logical batch per site.")] = 64,
    lr: Annotated[float, typer.Option("--lr", help="Local learning rate.")] = _DEFAULTS.learning_rate,
    max_length: Annotated[int, typer.Option("--max-length", help="Tokens kept per text.")] = _DEFAULTS.max_length,
    lora_r: opt.LoraROpt = _DEFAULTS.lora_r,
    lora_alpha: opt.LoraAlphaOpt = _DEFAULTS.lora_alpha,
    sites_per_round: Annotated[
        int, typer.Option("--sites-per-round", help="Sites sampled per round (0 = all with budget).")
    ] = 0,
    min_sites: Annotated[int, typer.Option("--min-sites", help="Fewest valid updates a round needs.")] = 2,
    max_update_norm: Annotated[
        float, typer.Option("--max-update-norm", help="Reject updates whose L2 change exceeds this.")
    ] = _DEFAULTS.max_update_norm,
    federated_eval: Annotated[
        bool, typer.Option("--federated-eval/--no-federated-eval", help="Ask sites for held-out metrics (not DP).")
    ] = True,
    text_column: opt.TextColumnOpt = "text",
    label_column: opt.LabelColumnOpt = "label",
    labels: opt.LabelsOpt = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Seed of the split, partition, init and (for reproducibility) the sites' noise."),
    ] = None,
    cpus_per_site: Annotated[
        float | None, typer.Option("--cpus-per-site", help="CPUs per simulated site (default: all, one at a time).")
    ] = None,
    gpus_per_site: Annotated[float, typer.Option("--gpus-per-site", help="GPU share per simulated site.")] = 0.0,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its last checkpoint.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run directory (default: runs/simulate-<timestamp>).")
    ] = None,
) -> None:
    """Simulate a federation locally: every site trains with DP-SGD under its own ledger; the server aggregates.

    With no options: the built-in sample data, 4 IID sites, MiniLM, FFA-LoRA, 3 rounds, epsilon 8 per site.
    The run directory receives the final adapter (PEFT format), metrics.json, privacy_report.json, progress.png,
    every site's ledger, and checkpoints. The command fails if any site crashed.
    """
    from simulations.simulate import SimulationRequest, prepare, run

    out = out or Path("runs") / f"simulate-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    request = SimulationRequest(
        data=data,
        eval_data=eval_data,
        site_data=tuple(site_data or ()),
        sites=sites,
        partition=partition,
        data_spec=opt.data_spec(fmt="auto", text_column=text_column, label_column=label_column, labels=labels),
        site_max_epsilon=parse_limit(site_max_epsilon) if site_max_epsilon is not None else None,
        resume=resume,
        cpus_per_site=cpus_per_site,
        gpus_per_site=gpus_per_site,
        seed=seed,
    )
    config = parse_settings(
        FederationConfig,
        {
            "model": model,
            "pooling": pooling,
            "labels": ("pending", "labels"),  # replaced by the data's label set in prepare()
            "strategy": strategy,
            "num-rounds": rounds,
            "sites-per-round": sites_per_round,
            "min-sites": min_sites,
            "local-epochs": local_epochs,
            "batch-size": batch_size,
            "learning-rate": lr,
            "max-length": max_length,
            "lora-r": lora_r,
            "lora-alpha": lora_alpha,
            "max-grad-norm": max_grad_norm,
            "target-epsilon": epsilon,
            "delta": delta,
            "max-update-norm": max_update_norm,
            "federated-evaluation": federated_eval,
            "out-dir": str(out),
            "seed": seed if seed is not None else 0,
        },
        context="option",
    )
    prepared = prepare(request, config)
    console.print(
        f"[bold]fedtune simulate[/]: {len(prepared.sites)} sites, strategy {prepared.config.strategy}, "
        f"{prepared.config.num_rounds} rounds, target epsilon {prepared.config.target_epsilon:g} per site, "
        f"run directory {out}"
    )
    table = _round_table()
    with console.status("starting the simulation engine (Ray)...") as status:

        def on_round(record: dict[str, Any]) -> None:
            row = _round_row(record)
            table.add_row(*row)
            console.print("  ".join(f"{h}={v}" for h, v in zip(_HEADERS, row, strict=True)))
            status.update(f"round {record['round']} of {prepared.config.num_rounds} done")

        result = run(prepared, request, on_round=on_round)
    console.print(table)
    if result.stop_reason:
        console.print(f"[yellow]{result.stop_reason}[/]")
    console.print(f"final adapter: {out / 'adapter'}   privacy report: {out / 'privacy_report.json'}")
    if not result.ok:
        names = ", ".join(sorted({f"{c['site_name']} (round {c['round']}): {c['reason']}" for c in result.crashes}))
        raise FederationError(f"{len(result.crashes)} site crash(es) during the simulation: {names}")


_HEADERS = ("round", "trained", "refused", "rejected", "crashed", "train loss", "server acc", "sites acc", "epsilon")


def _round_table() -> Table:
    table = Table(title="Rounds", title_justify="left")
    for header in _HEADERS:
        table.add_column(header, justify="right")
    return table


def _round_row(record: dict[str, Any]) -> tuple[str, ...]:
    sites = record.get("sites", [])
    count = {s: sum(site["status"] == s for site in sites) for s in ("trained", "refused", "rejected", "crashed")}
    spent = [site["metrics"].get("epsilon-spent") for site in sites if site["metrics"].get("epsilon-spent") is not None]
    train = record.get("train") or {}
    server = record.get("server_eval") or {}
    federated = record.get("federated_eval") or {}
    epsilon = f"{min(spent):.3g}..{max(spent):.3g}" if spent else "-"
    return (
        str(record["round"]),
        str(count["trained"]),
        str(count["refused"]),
        str(count["rejected"]),
        str(count["crashed"]),
        fmt(train.get("train-loss")),
        fmt(server.get("accuracy")),
        fmt(federated.get("accuracy")),
        epsilon,
    )


def register(app: typer.Typer) -> None:
    """Add ``simulate`` to the root command."""
    app.command("simulate")(simulate)
