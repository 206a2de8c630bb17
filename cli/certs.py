"""``fedtune certs``: the federation CA, the SuperLink certificate, and sites' authentication keys."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.display import console

certs_app = typer.Typer(help="Create and check the federation's certificates and site keys.", no_args_is_help=True)


@certs_app.command("init")
def init(
    out: Annotated[Path, typer.Option("--out", help="Directory for ca.pem, ca.key, server.pem, server.key.")],
    san: Annotated[
        list[str] | None,
        typer.Option(
            "--san",
            help="DNS name or IP address sites use to reach the SuperLink (repeat; default: localhost, 127.0.0.1, "
            "superlink).",
        ),
    ] = None,
    days: Annotated[int, typer.Option("--days", help="Validity of the server certificate.")] = 365,
) -> None:
    """Create a federation CA and a SuperLink TLS certificate it signs (private keys 0600, never printed)."""
    from common.certs.authority import DEFAULT_SANS, init_federation

    names = tuple(san) if san else DEFAULT_SANS
    certs = init_federation(out, sans=names, days=days)
    console.print(f"CA certificate (give it to every site): {certs.ca_cert}")
    console.print(f"SuperLink certificate for {', '.join(names)}: {certs.server_cert} (key {certs.server_key}, 0600)")
    console.print(f"CA private key: {certs.ca_key} (0600; keep it offline)")


@certs_app.command("node-key")
def node_key(
    name: Annotated[str, typer.Argument(help="Site name (letters, digits, . _ -).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for NAME.key and NAME.pub.")],
) -> None:
    """Create a site's SuperNode authentication key pair (ECDSA P-384, OpenSSH format, as Flower expects)."""
    from common.certs.node_keys import create_node_key

    private, public = create_node_key(out, name)
    console.print(f"private key (stays at the site, 0600): {private}")
    console.print(f"public key (send it to the server operator to enroll): {public}")


@certs_app.command("check")
def check(
    certs: Annotated[Path, typer.Option("--certs", help="Directory made by `fedtune certs init`.")],
    host: Annotated[str | None, typer.Option("--host", help="Name sites dial; must be in the certificate.")] = None,
) -> None:
    """Check the CA, the server certificate and key (validity, issuer, match, host name, permissions)."""
    from common.certs.authority import FederationCerts
    from common.certs.checks import check_server_certs

    check_server_certs(FederationCerts(certs), host=host)
    console.print(f"{certs}: certificates and key are valid" + (f" for {host}" if host else ""))
