"""``fedtune simulate``: a whole federation on this machine, on Flower's simulation engine."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import options as opt
from cli import run_options as ro
from cli.display import console
from common.errors import FederationError
from common.privacy.budget import parse_limit


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
    rounds: ro.RoundsOpt = ro.DEFAULTS.num_rounds,
    strategy: ro.StrategyOpt = ro.DEFAULTS.strategy,
    model: opt.ModelOpt = ro.DEFAULTS.model,
    pooling: opt.PoolingOpt = ro.DEFAULTS.pooling,
    epsilon: ro.RunEpsilonOpt = ro.DEFAULTS.target_epsilon,
    delta: opt.DeltaOpt = ro.DEFAULTS.delta,
    site_max_epsilon: Annotated[
        str | None,
        typer.Option("--site-max-epsilon", help="Each simulated site's lifetime limit (default: --epsilon)."),
    ] = None,
    max_grad_norm: opt.ClipOpt = ro.DEFAULTS.max_grad_norm,
    local_epochs: ro.LocalEpochsOpt = ro.DEFAULTS.training.epochs,
    batch_size: ro.BatchOpt = ro.DEFAULTS.training.batch_size,
    lr: ro.LrOpt = ro.DEFAULTS.training.learning_rate,
    max_length: ro.MaxLengthOpt = ro.DEFAULTS.training.max_length,
    lora_r: opt.LoraROpt = ro.DEFAULTS.lora.r,
    lora_alpha: opt.LoraAlphaOpt = ro.DEFAULTS.lora.alpha,
    sites_per_round: ro.SitesPerRoundOpt = ro.DEFAULTS.sites_per_round,
    min_sites: ro.MinSitesOpt = ro.DEFAULTS.min_sites,
    max_update_norm: ro.MaxUpdateNormOpt = ro.DEFAULTS.max_update_norm,
    federated_eval: ro.FederatedEvalOpt = ro.DEFAULTS.federated_evaluation,
    upload_precision: ro.UploadPrecisionOpt = ro.DEFAULTS.upload_precision,
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
    from cli.progress import round_line, round_row, round_table
    from simulations.simulate import SimulationRequest, prepare, read_sources, run

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
    sources = read_sources(request, out)
    config = ro.federation_config(
        locals(),  # the shared run options, by parameter name
        {**sources.run_config_values(out), "out-dir": str(out), "seed": seed if seed is not None else ro.DEFAULTS.seed},
    )
    prepared = prepare(request, config, sources)
    console.print(
        f"[bold]fedtune simulate[/]: {len(prepared.sites)} sites, strategy {prepared.config.strategy}, "
        f"{prepared.config.num_rounds} rounds, target epsilon {prepared.config.target_epsilon:g} per site, "
        f"run directory {out}"
    )
    table = round_table()
    with console.status("starting the simulation engine (Ray)...") as status:

        def on_round(record: dict[str, Any]) -> None:
            row = round_row(record)
            table.add_row(*row)
            console.print(round_line(row))
            status.update(f"round {record['round']} of {prepared.config.num_rounds} done")

        result = run(prepared, request, on_round=on_round)
    console.print(table)
    if result.stop_reason:
        console.print(f"[yellow]{result.stop_reason}[/]")
    console.print(f"final adapter: {out / 'adapter'}   privacy report: {out / 'privacy_report.json'}")
    if not result.ok:
        names = ", ".join(sorted({f"{c['site_name']} (round {c['round']}): {c['reason']}" for c in result.crashes}))
        raise FederationError(f"{len(result.crashes)} site crash(es) during the simulation: {names}")
