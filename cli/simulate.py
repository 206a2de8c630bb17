"""``fedtune simulate``: a whole federation on this machine, on Flower's simulation engine."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli import options as opt
from cli import run_options as ro
from cli.display import console, err_console_warning
from common.privacy.budget import parse_limit

if TYPE_CHECKING:
    from collections.abc import Iterable

    from common.data.pairs import PairSpec
    from common.federation.rounds import RoundRecord
    from common.federation.site import SiteSettings


@ro.with_run_options
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
    site_max_epsilon: Annotated[
        str | None,
        typer.Option("--site-max-epsilon", help="Each simulated site's lifetime limit (default: --epsilon)."),
    ] = None,
    text_column: opt.TextColumnOpt = opt.DATA_DEFAULTS.text_column,
    label_column: opt.LabelColumnOpt = opt.DATA_DEFAULTS.label_column,
    labels: opt.LabelsOpt = None,
    prompt_column: Annotated[
        str, typer.Option("--prompt-column", help="generate: column of the prompts (JSONL messages also read).")
    ] = "prompt",
    response_column: Annotated[
        str, typer.Option("--response-column", help="generate: column of the responses.")
    ] = "response",
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
    *,
    run: ro.RunOptions,
) -> None:
    """Simulate a federation locally: every site trains with DP-SGD under its own ledger; the server aggregates.

    With no options: the built-in sample data, 4 IID sites, MiniLM, FFA-LoRA, 3 rounds, epsilon 8 per site.
    With a causal LM (--model DIR; --task generate): instruction -> response fine-tuning on prompt/response pairs
    (default data: the built-in synthetic instructions).
    The run directory receives the final adapter (PEFT format), metrics.json, privacy_report.json, progress.png,
    every site's ledger, and checkpoints. The command fails if any site crashed.
    """
    from cli.progress import round_line, round_row, round_table, selection_line
    from simulations.simulate import SimulationRequest, prepare, read_sources, run_simulation

    out = out or Path("runs") / f"simulate-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    request = SimulationRequest(
        data=data,
        eval_data=eval_data,
        site_data=tuple(site_data or ()),
        sites=sites,
        partition=partition,
        task=ro.run_task(run),
        data_spec=opt.data_spec(fmt="auto", text_column=text_column, label_column=label_column, labels=labels),
        pair_spec=pair_spec(prompt_column, response_column),
        site_max_epsilon=parse_limit(site_max_epsilon) if site_max_epsilon is not None else None,
        resume=resume,
        cpus_per_site=cpus_per_site,
        gpus_per_site=gpus_per_site,
        seed=seed,
    )
    sources = read_sources(request, out)
    seeded = seed if seed is not None else ro.DEFAULTS.seed
    config = ro.federation_config(run, {**sources.run_config_values(out), "out-dir": str(out), "seed": seeded})
    prepared = prepare(request, config, sources)
    console.print(
        f"[bold]fedtune simulate[/]: {len(prepared.sites)} sites, strategy {prepared.config.strategy}, "
        f"{prepared.config.num_rounds} rounds, target epsilon {prepared.config.target_epsilon:g} per site, "
        f"run directory {out}"
    )
    for line in prepared.recipe_lines:
        console.print(line, markup=False)
    task = request.task
    table = round_table(task)
    with console.status("starting the simulation engine (Ray)...") as status:

        def on_round(record: RoundRecord) -> None:
            row = round_row(record, task)
            table.add_row(*row)
            console.print(round_line(row, task))
            status.update(f"round {record.round} of {prepared.config.num_rounds} done")

        result = run_simulation(prepared, request, on_round=on_round)
    console.print(table)
    if result.stop_reason:
        console.print(f"[yellow]{result.stop_reason}[/]")
    console.print(selection_line(result))
    console.print(f"final adapter: {out / 'adapter'}   privacy report: {out / 'privacy_report.json'}")
    _show_site_errors(prepared.sites.values(), {crash.site.site_name for crash in result.crashes})
    result.raise_for_crashes()


def pair_spec(prompt_column: str, response_column: str) -> PairSpec:
    """The prompt/response layout of generate data, validated (errors name the options)."""
    from common.data.pairs import PairSpec
    from common.parsing import parse_settings

    names = {"prompt_column": "--prompt-column", "response_column": "--response-column"}
    values = {"prompt_column": prompt_column, "response_column": response_column}
    return parse_settings(PairSpec, values, context="option", names=names)


def _show_site_errors(sites: Iterable[SiteSettings], crashed: set[str]) -> None:
    """A crashed site tells the server nothing but that it failed; here the operator IS every site: show why."""
    from client.app import error_log

    for site in sites:
        log = error_log(site.to_node_config())
        if site.site_name in crashed and log is not None and log.exists():
            lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
            err_console_warning(f"{site.site_name} failed: {lines[-1] if lines else '?'} (full log: {log})")
