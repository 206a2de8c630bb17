"""The ``fedtune`` root command: every sub-command is registered here, explicitly, in one list.

``cli`` is the top layer: it may import every other package, and none imports it. It is also the one place where
errors become messages and exit codes. Heavy libraries (torch, transformers, Flower) are imported inside commands,
so ``--help`` stays instant.

Error contract: a :class:`~common.errors.FedtuneError` is printed as one line on stderr and the process exits with
the error's ``exit_code``; tracebacks are shown only with ``--debug``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import typer
from rich.console import Console
from rich.markup import escape

from common import __version__
from common.errors import FedtuneError

app = typer.Typer(
    name="fedtune",
    help="Privacy-preserving federated fine-tuning: LoRA adapters trained with DP-SGD at each site, "
    "per-site privacy budgets, Flower transport.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fedtune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and debug logs on errors."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Privacy-preserving federated fine-tuning with LoRA and DP-SGD."""
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Flower prints through its own handler; stop its records from printing twice through ours.
    logging.getLogger("flwr").propagate = False


def _register_commands() -> None:
    from cli import audit, certs, client, generate, predict, sample, server, simulate, train

    app.command("train")(train.train)
    app.command("generate")(generate.generate)
    app.command("predict")(predict.predict)
    app.command("simulate")(simulate.simulate)
    app.add_typer(server.server_app, name="server")
    app.add_typer(client.client_app, name="client")
    app.command("audit")(audit.audit)
    app.command("ledger-key")(audit.keygen)
    app.command("ledger-attribute")(audit.attribute)
    app.add_typer(certs.certs_app, name="certs")
    app.command("sample-data")(sample.sample_data)


_register_commands()


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        typer.main.get_command(app).main(args=args, prog_name="fedtune", standalone_mode=True)
    except FedtuneError as exc:
        if debug:
            err_console.print_exception()
        err_console.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
