"""``fedtune audit``: what each dataset in one or more privacy ledgers has spent, verified on request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from cli import options as opt
from cli.display import console, fmt

if TYPE_CHECKING:
    from common.privacy.audit import LedgerAudit


def audit(
    ledgers: Annotated[list[Path], typer.Argument(help="Ledger file(s) to audit.", show_default=False)],
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Verify the hash chain, signatures, record sets and head anchor; exit non-zero naming the first "
            "bad record.",
        ),
    ] = False,
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", help="Pin the site's Ed25519 public key (.pub file) when verifying."),
    ] = None,
    witness: Annotated[
        Path | None,
        typer.Option(
            "--witness",
            help="A run's privacy_report.json: every ledger head the server witnessed must still be in the ledger "
            "(a ledger rolled back or replaced behind a witness fails). Implies --verify.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report instead of tables.")] = False,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write a PNG of epsilon over events.")] = None,
) -> None:
    """Report, per dataset and per exposure class, the epsilon of the most exposed record (recomputed from events).

    A record's epsilon composes every event whose record set contained it, whatever file, labelling or run the event
    came from; a dataset's figure is its most exposed record's. Without --verify the ledger is only parsed (a corrupt
    or truncated file is still an error). With --verify any edited, deleted, reordered or inserted record, bad
    signature or missing head anchor fails the command (exit 4); with --witness, so does a witnessed head the ledger
    no longer contains.
    """
    from common.privacy.audit import AUDIT_SCHEMA, audit_ledger, plot_history
    from common.privacy.signing import parse_public_key
    from common.privacy.witnesses import check_witnessed, read_witnesses

    trusted = None
    if public_key is not None:
        trusted = parse_public_key(_read_text(public_key), source=str(public_key))
    witnesses = read_witnesses(witness) if witness is not None else None
    audits = []
    for path in ledgers:
        report = audit_ledger(
            path,
            verify=verify or trusted is not None or witness is not None,
            trusted_key=trusted,
            with_history=plot is not None,
        )
        if witnesses is not None and witness is not None:
            from common.privacy.ledger import PrivacyLedger

            checked = check_witnessed(PrivacyLedger(path).snapshot(), witnesses, report=witness)
            report = report.with_witnessed(checked)
        audits.append(report)
    if plot is not None:
        plot_history(audits, plot)
    if as_json:
        typer.echo(json.dumps({"schema": AUDIT_SCHEMA, "ledgers": [a.to_json() for a in audits]}, indent=2))
        return
    for report in audits:
        _print(report)
    if plot is not None:
        console.print(f"plot: {plot}")


def _print(report: LedgerAudit) -> None:
    table = Table(title=f"{report.path}", title_justify="left")
    table.add_column("dataset (records)", overflow="fold")
    for column in ("events", "runs", "rounds", "epsilon", "limit", "remaining"):
        table.add_column(column, justify="right", no_wrap=True)
    for d in report.datasets:
        pending = f", {d.pending} pending" if d.pending else ""
        size = f"{d.records} records" if d.records is not None else "legacy: charged to every record"
        table.add_row(
            f"{d.dataset_id}\n({size}, {d.fingerprint[:12]})",
            f"{d.events}{pending}",
            str(d.runs),
            str(d.rounds),
            "inf (non-private)" if d.non_private else fmt(d.epsilon),
            fmt(d.limit) if d.limit is not None else "none",
            fmt(d.remaining),
        )
    console.print(table)
    if report.classes:
        classes = Table(title="exposure classes (records with the same history)", title_justify="left")
        for column in ("records", "events", "epsilon", "datasets"):
            classes.add_column(column, justify="right" if column != "datasets" else "left")
        for c in report.classes:
            eps = fmt(c.epsilon) if c.epsilon != float("inf") else "inf (non-private)"
            classes.add_row(str(c.records), str(c.events), eps, ", ".join(c.datasets))
        console.print(classes)
    if report.legacy_unattributed:
        console.print(
            f"{report.legacy_unattributed} legacy event(s) from before per-record budgets name no records: each "
            "counts against every record until its dataset is trained on again"
        )
    if report.verified:
        integrity = f"verified: {report.records} records, hash chain and head anchor intact" + (
            ", every signature valid" if report.signed else " (unsigned ledger)"
        )
    else:
        integrity = "integrity NOT checked (run with --verify)"
    accounting = (
        f"{report.accountant} accountant at delta {report.delta:g}" if report.delta is not None else "no events"
    )
    console.print(f"{integrity}; epsilon recomputed from the events ({accounting})")
    if report.witnessed:
        rounds = ", ".join(f"{w['site']} round {w['round']} (seq {w['seq']})" for w in report.witnessed)
        console.print(f"every witnessed head is in the ledger: {rounds}")


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


def attribute(
    ledger: Annotated[Path, typer.Option("--ledger", help="The site's privacy ledger.")],
    data: Annotated[Path, typer.Option("--data", help="A data file some legacy events were recorded for.")],
    text_column: opt.TextColumnOpt = opt.DATA_DEFAULTS.text_column,
    label_column: opt.LabelColumnOpt = opt.DATA_DEFAULTS.label_column,
    labels: opt.LabelsOpt = None,
    fmt_: opt.FormatOpt = opt.DATA_DEFAULTS.format,
    signing_key: opt.SigningKeyOpt = None,
) -> None:
    """Charge legacy events (recorded before per-record budgets) to the records of the file they were recorded for.

    Legacy events name a file's content fingerprint, not its records, so they count against EVERY record of the
    ledger. Given the same file (and the same label set it was read with then), this proves which records they
    covered and says so in the ledger; nothing is spent. Training on the file again does the same automatically.
    """
    from common.data.readers import read_labeled_file
    from common.privacy.budget import BudgetSettings

    spec = opt.data_spec(fmt=fmt_, text_column=text_column, label_column=label_column, labels=labels)
    source = read_labeled_file(data, spec)
    site_ledger = BudgetSettings(ledger=ledger, max_epsilon=None, signing_key=signing_key).open_ledger()
    dataset = site_ledger.dataset(source.texts, dataset_id=str(data), source=(source.fingerprint, source.texts))
    if site_ledger.attribute(dataset):
        console.print(f"{ledger}: legacy events of {data} ({source.fingerprint[:12]}) now count against its records")
    else:
        console.print(f"{ledger}: no unattributed legacy events for {data}'s content ({source.fingerprint[:12]})")
