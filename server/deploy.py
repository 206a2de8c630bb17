"""Run a real federation's coordinator: a TLS SuperLink with SuperNode authentication, enrolment, the run, progress.

``fedtune server start`` = :func:`serve`, which orchestrates modules that each hold one role:

1. **preflight** (here): certificates (valid, issued by the CA, naming the host, key matching, 0600), enrolled site
   keys (OpenSSH ECDSA), the Flower app directory, the output directory, no SuperLink of this directory still
   running. Nothing starts if any check fails.
2. start ``flower-superlink`` (:mod:`server.superlink`) with TLS (``--ssl-*``) and ``--enable-supernode-auth``
   (plaintext only with an explicit ``insecure``), runtime dependency installation disabled, its own state database
   and log under the run directory, and wait until it serves;
3. enrol every site public key under the operator's name, recording the node id the SuperLink binds to it in the
   run's identity table (:mod:`server.identities`: how every report names the site), and submit the fedtune app
   with its run config (:mod:`server.flwr_cli`, the only module that talks to the ``flwr`` CLI, through a private
   ``FLWR_HOME`` inside the run directory);
4. follow the rounds through the run's round log until Flower reports the run finished (:mod:`server.follow`);
5. stop the SuperLink and every process it started (SuperExec, ServerApps), at the end or on Ctrl-C/SIGTERM,
   unless asked to keep it - ``fedtune server stop`` (:func:`server.superlink.stop_server`) does the same for a
   detached one.
"""

from __future__ import annotations

import logging
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.certs.authority import FederationCerts
from common.certs.checks import WILDCARD_BINDS, check_server_certs
from common.errors import ConfigError, FederationError
from common.federation.config import FederationConfig
from common.processes import interrupts_ignored, sigterm_as_interrupt
from server.flwr_cli import RUN_CONFIG_FILE, FlwrCli, write_run_config
from server.follow import RoundCallback, follow_run
from server.identities import IdentityTable, SiteKey, check_site_keys, enrol_sites
from server.superlink import SERVER_STATE, SuperLink, superlink_command, superlink_running

log = logging.getLogger(__name__)

APP_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ServerLaunch:
    """How the coordinator runs: where its certificates are, who may join, where it listens, where it writes."""

    out: Path
    certs: Path | None
    enroll: tuple[SiteKey, ...]
    host: str = "127.0.0.1"
    port: int = 9093
    insecure: bool = False
    keep_running: bool = False
    app_dir: Path = APP_ROOT

    @property
    def dial_host(self) -> str:
        """The address local tools use to reach the SuperLink (a wildcard bind is reached on loopback)."""
        return "127.0.0.1" if self.host in WILDCARD_BINDS else self.host

    @property
    def address(self) -> str:
        """``host:port`` for local tools."""
        return f"{self.dial_host}:{self.port}"

    @property
    def federation_certs(self) -> FederationCerts | None:
        """The certificate files; None for a plaintext (``insecure``) SuperLink."""
        if self.insecure:
            return None
        if self.certs is None:
            raise ConfigError("TLS is on by default: pass --certs DIR (from `fedtune certs init`), or --insecure")
        # Absolute: the SuperLink runs in the run directory, where a relative --certs would name nothing.
        return FederationCerts(self.certs.resolve())

    def superlink_command(self) -> list[str]:
        """The flower-superlink command line for this launch."""
        return superlink_command(host=self.host, port=self.port, out=self.out, certs=self.federation_certs)


def preflight(launch: ServerLaunch, config: FederationConfig) -> None:
    """Every check that can fail before a process starts."""
    pyproject = launch.app_dir / "pyproject.toml"
    try:
        app = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        raise ConfigError(
            f"{launch.app_dir}: not the fedtune Flower app (no [tool.flwr.app] in pyproject.toml)"
        ) from None
    if app.get("components", {}).get("serverapp") != "server.app:app":
        raise ConfigError(f"{pyproject}: the Flower app is not fedtune's")
    certs = launch.federation_certs  # refuses a TLS launch without certificates
    if certs is None:
        if launch.enroll:
            raise ConfigError("--enroll needs TLS: SuperNode authentication is not available with --insecure")
    else:
        check_server_certs(certs, host=launch.dial_host)
        if not launch.enroll:
            raise ConfigError("enrol at least one site: --enroll [NAME=]SITE.pub (from `fedtune certs node-key`)")
        check_site_keys(launch.enroll)
        if len(launch.enroll) < config.min_sites:
            raise ConfigError(f"{len(launch.enroll)} enrolled site(s) cannot satisfy --min-sites {config.min_sites}")
    if not Path(config.out_dir).is_absolute():
        raise ConfigError(f"the run's out-dir must be absolute (the ServerApp runs elsewhere); got {config.out_dir}")
    if superlink_running(launch.out):
        raise FederationError(
            f"{launch.out / SERVER_STATE}: a SuperLink started for this directory is still running; "
            "`fedtune server stop` it"
        )


def serve(
    launch: ServerLaunch,
    config: FederationConfig,
    *,
    on_ready: Callable[[str], None] | None = None,
    on_round: RoundCallback | None = None,
) -> dict[str, Any]:
    """Start the SuperLink, enrol sites, run the federation to its end, and return the run's metrics.json.

    ``on_ready(run_id)`` is called once every site is enrolled and the run submitted: from then on sites may join
    (a SuperNode whose key is not yet enrolled is refused, so sites started earlier must be restarted).
    """
    preflight(launch, config)
    launch.out.mkdir(parents=True, exist_ok=True)
    certs = launch.federation_certs
    ca = certs.ca_cert if certs is not None else None
    cli = FlwrCli.connect(launch.out, launch.address, ca=ca)
    with sigterm_as_interrupt():  # entered before the SuperLink exists: no SIGTERM can orphan it
        superlink = SuperLink.start(launch.superlink_command(), out=launch.out, address=launch.address)
        try:
            superlink.wait_ready(launch.dial_host, launch.port, ca=ca)
            # Each key's node id, under the operator's name: how the ServerApp names sites (server.identities).
            enrol_sites(launch.enroll, cli.register, IdentityTable(Path(config.out_dir)))
            run_config = write_run_config(launch.out / RUN_CONFIG_FILE, config.to_run_config())
            run_id = cli.submit(launch.app_dir, run_config)
            if on_ready is not None:
                on_ready(run_id)
            return follow_run(run_id, cli=cli, superlink=superlink, out_dir=Path(config.out_dir), on_round=on_round)
        finally:
            if not launch.keep_running:
                with interrupts_ignored():  # a second Ctrl-C or SIGTERM must not cut the stop short
                    superlink.stop()
