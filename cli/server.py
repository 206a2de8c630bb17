"""``fedtune server start|stop``: the coordinating server of a real (multi-machine) federation."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import options as opt
from cli import run_options as ro
from cli.display import console, err_console_warning
from common.errors import ConfigError, FederationError

server_app = typer.Typer(
    help="Run the coordinating server (Flower SuperLink + the fedtune ServerApp).", no_args_is_help=True
)


@server_app.command("start")
def start(
    out: Annotated[Path, typer.Option("--out", help="Run directory (adapter, metrics, privacy report, logs).")],
    certs: Annotated[
        Path | None, typer.Option("--certs", help="Directory from `fedtune certs init` (TLS is on by default).")
    ] = None,
    enroll: Annotated[
        list[Path] | None,
        typer.Option("--enroll", help="A site's public key (.pub from `fedtune certs node-key`); repeat per site."),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (0.0.0.0 for other machines; see docs/security.md).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port of the SuperLink (sites connect here).")] = 9093,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext, no node authentication. Never for real data.")
    ] = False,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="Leave the SuperLink running after the run (stop it later).")
    ] = False,
    labels: opt.LabelsOpt = None,
    eval_data: Annotated[
        Path | None, typer.Option("--eval-data", help="Server-side held-out file (also gives the label set).")
    ] = None,
    model: opt.ModelOpt = ro.DEFAULTS.model,
    pooling: opt.PoolingOpt = ro.DEFAULTS.pooling,
    rounds: ro.RoundsOpt = ro.DEFAULTS.num_rounds,
    strategy: ro.StrategyOpt = ro.DEFAULTS.strategy,
    epsilon: ro.RunEpsilonOpt = ro.DEFAULTS.target_epsilon,
    delta: opt.DeltaOpt = ro.DEFAULTS.delta,
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
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the initial adapter and of site sampling.")
    ] = ro.DEFAULTS.seed,
) -> None:
    """Start a TLS SuperLink with node authentication, enrol the sites, run the federation and write its results.

    Checks certificates and keys before anything starts. Sites join with `fedtune client start`. The run directory
    receives the same outputs as `fedtune simulate` (adapter/, metrics.json, privacy_report.json, progress.png,
    checkpoints/); a restarted server resumes from the last checkpoint.
    """
    from cli.progress import round_line, round_row
    from server.deploy import ServerLaunch, serve

    if insecure:
        err_console_warning(
            "--insecure: traffic is NOT encrypted and ANY SuperNode may join. Never use it with real data."
        )
    out = out.resolve()
    config = ro.federation_config(
        locals(),  # the shared run options, by parameter name
        {
            "labels": _labels(labels, eval_data),
            "eval-data": str(eval_data.resolve()) if eval_data else "",
            "out-dir": str(out),
            "seed": seed,
        },
    )
    launch = ServerLaunch(
        out=out,
        certs=certs,
        enroll=tuple(enroll or ()),
        host=host,
        port=port,
        insecure=insecure,
        keep_running=keep_running,
    )
    console.print(
        f"[bold]fedtune server[/]: {'PLAINTEXT' if insecure else 'TLS + SuperNode authentication'} on "
        f"{host}:{port}, {len(launch.enroll)} enrolled site(s), {config.num_rounds} rounds ({config.strategy}); "
        f"started {dt.datetime.now():%H:%M:%S}"
    )

    def on_ready(run_id: str) -> None:
        console.print(f"run {run_id} submitted; enrolled sites may join now; waiting for sites")

    def on_round(record: dict[str, Any]) -> None:
        console.print(round_line(round_row(record)))

    metrics = serve(launch, config, on_ready=on_ready, on_round=on_round)
    console.print(f"run {metrics['run_id']}: {metrics['completed_rounds']} of {metrics['planned_rounds']} rounds")
    if metrics.get("stop_reason"):
        console.print(f"[yellow]{metrics['stop_reason']}[/]")
    console.print(f"final adapter: {out / 'adapter'}   privacy report: {out / 'privacy_report.json'}")
    if metrics.get("crashes"):
        raise FederationError(f"{len(metrics['crashes'])} site crash(es) during the run; see {out / 'metrics.json'}")


@server_app.command("stop")
def stop(out: Annotated[Path, typer.Option("--out", help="The run directory given to `server start`.")]) -> None:
    """Stop the SuperLink that `server start --keep-running` left running for this run directory."""
    from server.deploy import stop_server

    console.print("stopped the SuperLink" if stop_server(out.resolve()) else f"no SuperLink was running for {out}")


def _labels(labels: str | None, eval_data: Path | None) -> tuple[str, ...]:
    if labels:
        return opt.split_list(labels) or ()
    if eval_data is not None:
        from common.data.readers import read_labeled_file

        return read_labeled_file(eval_data).label_names
    raise ConfigError("the server must know the label set: pass --labels a,b,... or --eval-data FILE")
