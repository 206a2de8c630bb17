"""``fedtune client start``: one data-owning site joins a federation (a Flower SuperNode with its own settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli import options as opt
from cli.display import console, err_console_warning
from common.parsing import parse_settings
from common.privacy.budget import DEFAULT_MAX_EPSILON, parse_limit
from common.training.config import DEFAULT_DELTA

client_app = typer.Typer(
    help="Run a data-owning site (Flower SuperNode + the fedtune ClientApp).", no_args_is_help=True
)


@client_app.command("start")
def start(
    superlink: Annotated[str, typer.Option("--superlink", help="HOST:PORT of the federation's SuperLink.")],
    data: Annotated[Path, typer.Option("--data", help="This site's labelled data (never leaves the site).")],
    ledger: Annotated[Path, typer.Option("--ledger", help="This site's privacy ledger.")],
    ca: Annotated[Path | None, typer.Option("--ca", help="The federation's CA certificate (ca.pem).")] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="This site's private key (from `fedtune certs node-key`).")
    ] = None,
    max_epsilon: opt.MaxEpsilonOpt = str(DEFAULT_MAX_EPSILON),
    delta: opt.DeltaOpt = DEFAULT_DELTA,
    site_name: Annotated[
        str, typer.Option("--site-name", help="This site's name in its own logs (the server names sites by enrolment).")
    ] = "site",
    release_metrics: Annotated[
        str,
        typer.Option(
            "--release-metrics",
            help="Held-out metrics to release to the server, comma-separated from accuracy, macro-f1, loss "
            "(NOT differentially private; default: none, and no data is held out).",
        ),
    ] = "",
    evaluate: Annotated[
        bool, typer.Option("--evaluate", help="Older spelling of --release-metrics accuracy,macro-f1,loss.")
    ] = False,
    task: Annotated[
        str,
        typer.Option(
            "--task",
            help="What --data holds: classify (labelled texts) or generate (prompt/response pairs); a run of the "
            "other task is refused.",
        ),
    ] = "classify",
    text_column: opt.TextColumnOpt = "text",
    label_column: opt.LabelColumnOpt = "label",
    prompt_column: Annotated[
        str, typer.Option("--prompt-column", help="generate: column of the prompts (JSONL messages also read).")
    ] = "prompt",
    response_column: Annotated[
        str, typer.Option("--response-column", help="generate: column of the responses.")
    ] = "response",
    labels: opt.LabelsOpt = None,
    signing_key: opt.SigningKeyOpt = None,
    device: opt.DeviceOpt = "auto",
    precision: opt.PrecisionOpt = "fp32",
    gradient_checkpointing: opt.GradientCheckpointingOpt = False,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext, no authentication. Never for real data.")
    ] = False,
    port: Annotated[
        int,
        typer.Option(
            "--port",
            min=0,
            max=65535,
            help="Local port of this SuperNode's runtime API (on 127.0.0.1; each site on a host needs its own). "
            "0 picks a free port and prints it.",
        ),
    ] = 9094,
    max_retries: Annotated[int, typer.Option("--max-retries", help="Reconnection attempts before giving up.")] = 10,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads",
            min=1,
            help="CPU threads for training (default: every core). Set it when several sites share one host: "
            "their threads otherwise contend, which made training 10x slower in our measurements.",
        ),
    ] = None,
    trusted_entities: Annotated[
        Path | None,
        typer.Option(
            "--trusted-entities",
            help="YAML of public keys whose signed app bundles this site accepts (see docs/security.md).",
        ),
    ] = None,
) -> None:
    """Join a federation as one site. The data path, ledger, epsilon limit, delta and labels are this site's alone.

    Refuses to start, before connecting, if the data fails validation, the ledger is corrupt or already exhausted,
    the local runtime port is taken, or the SuperLink's certificate does not verify against --ca. Ctrl-C or SIGTERM
    stops the site within 5 s (exit code 130), leaving no Flower process behind.
    """
    from client.deploy import ClientLaunch, pick_runtime_port, preflight, run_supernode
    from common.federation.site import SiteSettings

    site = parse_settings(
        SiteSettings,
        {
            "site_name": site_name,
            "data_path": data.resolve(),
            "ledger_path": ledger.resolve(),
            "max_epsilon": parse_limit(max_epsilon),
            "delta": delta,
            "signing_key": signing_key.resolve() if signing_key else None,
            "task": task,
            "text_column": text_column,
            "label_column": label_column,
            "prompt_column": prompt_column,
            "response_column": response_column,
            "labels": labels,  # the site's own label set: a run whose labels differ is refused
            "release_metrics": release_metrics,
            **({"evaluate": True} if evaluate else {}),
            "device": device,
            "precision": precision,
            "gradient_checkpointing": gradient_checkpointing,
        },
        context="option",
    )
    if insecure:
        err_console_warning("--insecure: traffic is NOT encrypted and the server is NOT authenticated.")
    if port == 0:
        port = pick_runtime_port()
        console.print(f"runtime port: {port} (picked for --port 0)")
    launch = ClientLaunch(
        superlink=superlink,
        ca=ca.resolve() if ca else None,
        key=key.resolve() if key else None,
        insecure=insecure,
        runtime_port=port,
        max_retries=max_retries,
        threads=threads,
        trusted_entities=trusted_entities.resolve() if trusted_entities else None,
    )
    security = preflight(site, launch)
    console.print(f"[bold]fedtune client[/] {site.site_name}: checks passed; joining {superlink} over {security}")
    raise typer.Exit(run_supernode(site, launch))
