"""``fedtune server start|stop``: the coordinating server of a real (multi-machine) federation."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli import options as opt
from cli import run_options as ro
from cli.display import console, err_console_warning
from common.errors import ConfigError
from common.federation.rounds import FederationResult

if TYPE_CHECKING:
    from common.federation.rounds import RoundRecord

server_app = typer.Typer(
    help="Run the coordinating server (Flower SuperLink + the fedtune ServerApp).", no_args_is_help=True
)


@server_app.command("start")
@ro.with_run_options
def start(
    out: Annotated[Path, typer.Option("--out", help="Run directory (adapter, metrics, privacy report, logs).")],
    certs: Annotated[
        Path | None, typer.Option("--certs", help="Directory from `fedtune certs init` (TLS is on by default).")
    ] = None,
    enroll: Annotated[
        list[str] | None,
        typer.Option(
            "--enroll",
            help=(
                "A site's public key (.pub from `fedtune certs node-key`) as NAME=KEY.pub, or KEY.pub (named after "
                "the file); repeat per site. The name is how reports, witnesses and logs name the site."
            ),
        ),
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
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the initial adapter and of site sampling.")
    ] = ro.DEFAULTS.seed,
    *,
    run: ro.RunOptions,
) -> None:
    """Start a TLS SuperLink with node authentication, enrol the sites, run the federation and write its results.

    Checks certificates and keys before anything starts. Sites join with `fedtune client start`. The run directory
    receives the same outputs as `fedtune simulate` (adapter/, metrics.json, privacy_report.json, progress.png,
    checkpoints/); a restarted server resumes from the last checkpoint.
    """
    from cli.progress import round_line, round_row, selection_line
    from server.deploy import ServerLaunch, serve
    from server.identities import SiteKey

    if insecure:
        err_console_warning(
            "--insecure: traffic is NOT encrypted and ANY SuperNode may join. Never use it with real data."
        )
    out = out.resolve()
    task = ro.run_task(run)
    generate = task == "generate"
    if generate and eval_data is not None:
        from common.data.pairs import read_pairs_file

        read_pairs_file(eval_data)  # validated before anything starts (the server reads it again)
    config = ro.federation_config(
        run,
        {
            "labels": None if generate else _labels(labels, eval_data),
            "eval-data": str(eval_data.resolve()) if eval_data else "",
            "out-dir": str(out),
            "seed": seed,
        },
    )
    launch = ServerLaunch(
        out=out,
        certs=certs,
        enroll=tuple(SiteKey.parse(text) for text in enroll or ()),
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

    def on_round(record: RoundRecord) -> None:
        console.print(round_line(round_row(record, task), task))

    result = FederationResult.from_metrics(serve(launch, config, on_ready=on_ready, on_round=on_round), out)
    console.print(f"run {result.run_id}: {result.completed_rounds} of {result.planned_rounds} rounds")
    if result.stop_reason:
        console.print(f"[yellow]{result.stop_reason}[/]")
    console.print(selection_line(result))
    console.print(f"final adapter: {out / 'adapter'}   privacy report: {out / 'privacy_report.json'}")
    result.raise_for_crashes()


@server_app.command("stop")
def stop(out: Annotated[Path, typer.Option("--out", help="The run directory given to `server start`.")]) -> None:
    """Stop the SuperLink that `server start --keep-running` left running for this run directory."""
    from server.superlink import stop_server

    console.print("stopped the SuperLink" if stop_server(out.resolve()) else f"no SuperLink was running for {out}")


def _labels(labels: str | None, eval_data: Path | None) -> tuple[str, ...]:
    if labels:
        return opt.split_list(labels) or ()
    if eval_data is not None:
        from common.data.readers import read_labeled_file

        return read_labeled_file(eval_data).label_names
    raise ConfigError("the server must know the label set: pass --labels a,b,... or --eval-data FILE")
