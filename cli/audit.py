"""``fedtune audit``: what each dataset in one or more privacy ledgers has spent, verified on request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from cli.display import console, fmt


def audit(
    ledgers: Annotated[list[Path], typer.Argument(help="Ledger file(s) to audit.", show_default=False)],
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Verify the hash chain, signatures and head anchor; exit non-zero naming the first bad event.",
        ),
    ] = False,
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", help="Pin the site's Ed25519 public key (.pub file) when verifying."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report instead of tables.")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG of epsilon over rounds.")] = None,
) -> None:
    """Report, per dataset: events, epsilon spent at delta (recomputed from the events), limit, remaining, rounds, runs.

    Without --verify the ledger is only parsed (a corrupt or truncated file is still an error). With --verify any
    edited, deleted, reordered or inserted event, bad signature or missing head anchor fails the command (exit 4).
    """
    from common.privacy.audit import audit_ledger, plot_history
    from common.privacy.signing import parse_public_key

    trusted = None
    if public_key is not None:
        trusted = parse_public_key(_read_text(public_key), source=str(public_key))
    audits = [
        audit_ledger(path, verify=verify or trusted is not None, trusted_key=trusted, with_history=plot is not None)
        for path in ledgers
    ]
    if plot is not None:
        plot_history(audits, plot)
    if as_json:
        typer.echo(json.dumps({"schema": "fedtune-audit/1", "ledgers": [a.to_json() for a in audits]}, indent=2))
        return
    for report in audits:
        table = Table(title=f"{report.path}", title_justify="left")
        table.add_column("dataset (fingerprint)", overflow="fold")
        for column in ("events", "runs", "rounds", "epsilon", "delta", "limit", "remaining"):
            table.add_column(column, justify="right", no_wrap=True)
        for d in report.datasets:
            pending = f", {d.pending} pending" if d.pending else ""
            table.add_row(
                f"{d.dataset_id}\n({d.fingerprint[:16]})",
                f"{d.events}{pending}",
                str(d.runs),
                str(d.rounds),
                "inf (non-private)" if d.non_private else fmt(d.epsilon),
                fmt(d.delta),
                fmt(d.limit) if d.limit is not None else "none",
                fmt(d.remaining),
            )
        console.print(table)
        if report.verified:
            integrity = f"verified: {report.records} records, hash chain and head anchor intact" + (
                ", every signature valid" if report.signed else " (unsigned ledger)"
            )
        else:
            integrity = "integrity NOT checked (run with --verify)"
        accountants = ", ".join(sorted({d.accountant for d in report.datasets})) or "-"
        console.print(f"{integrity}; epsilon recomputed from the events ({accountants} accountant)")
    if plot is not None:
        console.print(f"plot: {plot}")


def _read_text(path: Path) -> str:
    from common.errors import CertificateError

    try:
        return path.read_text()
    except OSError as exc:
        raise CertificateError(f"{path}: cannot read the public key: {exc.strerror}") from None


def keygen(
    out: Annotated[
        Path, typer.Option("--out", help="Private key file to create (0600); the public key goes to OUT.pub.")
    ],
) -> None:
    """Create an Ed25519 key for signing a site's privacy ledger (pass it to training with --signing-key)."""
    from common.privacy.signing import generate_signing_key, public_key_text

    public = generate_signing_key(out)
    console.print(f"wrote {out} (private, 0600) and {out}.pub; public key {public_key_text(public)}")
