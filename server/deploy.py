"""Run a real federation's coordinator: a TLS SuperLink with SuperNode authentication, enrolment, the run, progress.

``fedtune server start`` = this module:

1. **preflight**: certificates (valid, issued by the CA, naming the host, key matching, 0600), enrolled site keys
   (OpenSSH ECDSA), the Flower app directory, the output directory. Nothing starts if any check fails.
2. start ``flower-superlink`` with TLS (``--ssl-*``) and ``--enable-supernode-auth`` (plaintext only with an explicit
   ``insecure``), runtime dependency installation disabled, its own state database and log under the run directory;
3. enrol every site public key (``flwr supernode register``): only those SuperNodes may join;
4. submit the fedtune app with its run config (``flwr run``) and follow the rounds through the server's
   checkpoints, until Flower reports the run finished;
5. stop the SuperLink (unless asked to keep it) - ``fedtune server stop`` does the same for a detached one.

Connections for the ``flwr`` CLI live in a private ``FLWR_HOME`` inside the run directory, never the user's own.
"""

from __future__ import annotations

import json
import logging
import os
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.certs.authority import FederationCerts
from common.certs.checks import check_server_certs, probe_tls
from common.certs.node_keys import load_node_public_key
from common.errors import ConfigError, FederationError
from common.federation.config import FederationConfig
from common.fileio import atomic_write_bytes, atomic_write_json
from common.processes import flower_executable, run_flwr, sigterm_as_interrupt, start, stop, toml_value
from server.checkpoint import STATE_FILE, load_checkpoint
from server.federation import CHECKPOINT_DIR

log = logging.getLogger(__name__)

SERVER_STATE = "server.json"
CONNECTION = "fedtune"
APP_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ServerLaunch:
    """How the coordinator runs: where its certificates are, who may join, where it listens, where it writes."""

    out: Path
    certs: Path | None
    enroll: tuple[Path, ...]
    host: str = "127.0.0.1"
    port: int = 9093
    insecure: bool = False
    keep_running: bool = False
    app_dir: Path = APP_ROOT

    @property
    def dial_host(self) -> str:
        """The address local tools use to reach the SuperLink (a wildcard bind is reached on loopback)."""
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def address(self) -> str:
        """``host:port`` for local tools."""
        return f"{self.dial_host}:{self.port}"


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
    if launch.insecure:
        if launch.enroll:
            raise ConfigError("--enroll needs TLS: SuperNode authentication is not available with --insecure")
    else:
        if launch.certs is None:
            raise ConfigError("TLS is on by default: pass --certs DIR (from `fedtune certs init`), or --insecure")
        check_server_certs(FederationCerts(launch.certs), host=launch.dial_host)
        if not launch.enroll:
            raise ConfigError("enrol at least one site: --enroll SITE.pub (from `fedtune certs node-key`)")
        for key in launch.enroll:
            load_node_public_key(key)
        if len(launch.enroll) < config.min_sites:
            raise ConfigError(f"{len(launch.enroll)} enrolled site(s) cannot satisfy --min-sites {config.min_sites}")
    if not Path(config.out_dir).is_absolute():
        raise ConfigError(f"the run's out-dir must be absolute (the ServerApp runs elsewhere); got {config.out_dir}")
    state = launch.out / SERVER_STATE
    if state.exists() and _running(json.loads(state.read_text()).get("superlink_pid")):
        raise FederationError(
            f"{state}: a SuperLink started for this directory is still running; `fedtune server stop` it"
        )


def write_connection(launch: ServerLaunch) -> Path:
    """A private FLWR_HOME whose connection ``fedtune`` points at the SuperLink."""
    home = launch.out / "flwr-home"
    lines = [
        "[superlink]",
        f'default = "{CONNECTION}"',
        "",
        f"[superlink.{CONNECTION}]",
        f'address = "{launch.address}"',
    ]
    if launch.insecure:
        lines.append("insecure = true")
    else:
        assert launch.certs is not None
        lines.append(f"root-certificates = {toml_value(str(FederationCerts(launch.certs).ca_cert.resolve()))}")
    atomic_write_bytes(home / "config.toml", ("\n".join(lines) + "\n").encode())
    return home


def superlink_command(launch: ServerLaunch) -> list[str]:
    """The flower-superlink command line (TLS and node authentication unless insecure)."""
    command = [
        flower_executable("flower-superlink"),
        "--host",
        launch.host,
        "--port",
        str(launch.port),
        "--database",
        str(launch.out / "superlink.db"),
        "--disable-runtime-dependency-installation",
    ]
    if launch.insecure:
        return [*command, "--insecure"]
    assert launch.certs is not None
    certs = FederationCerts(launch.certs)
    return [
        *command,
        "--ssl-ca-certfile",
        str(certs.ca_cert),
        "--ssl-certfile",
        str(certs.server_cert),
        "--ssl-keyfile",
        str(certs.server_key),
        "--enable-supernode-auth",
    ]


RoundCallback = Callable[[dict[str, Any]], None]


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
    home = write_connection(launch)
    superlink = start(superlink_command(launch), log_file=launch.out / "superlink.log", cwd=launch.out)
    atomic_write_json(
        launch.out / SERVER_STATE,
        {"superlink_pid": superlink.pid, "address": launch.address, "started_at": time.time()},
    )
    try:
        with sigterm_as_interrupt():
            _wait_ready(launch, superlink)
            for key in launch.enroll:
                _enroll(key, home)
            run_id = _submit(launch, config, home)
            if on_ready is not None:
                on_ready(run_id)
            return _follow(launch, config, home, run_id, superlink, on_round)
    finally:
        if not launch.keep_running:
            stop(superlink.pid)
            (launch.out / SERVER_STATE).unlink(missing_ok=True)


def stop_server(out: Path) -> bool:
    """Stop the SuperLink a detached ``server start`` left running for ``out``; False if none was running."""
    state = out / SERVER_STATE
    if not state.exists():
        return False
    pid = json.loads(state.read_text()).get("superlink_pid")
    stopped = bool(pid) and stop(int(pid))
    state.unlink(missing_ok=True)
    return stopped


def _running(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_ready(launch: ServerLaunch, superlink: Any) -> None:
    deadline = time.monotonic() + 60
    while superlink.poll() is None and time.monotonic() < deadline:
        try:
            if launch.insecure:
                import socket

                socket.create_connection((launch.dial_host, launch.port), timeout=2).close()
            else:
                assert launch.certs is not None
                probe_tls(launch.address, FederationCerts(launch.certs).ca_cert, timeout=1)
            return
        except (OSError, FederationError):
            time.sleep(0.5)
    raise FederationError(
        f"the SuperLink did not start (exit code {superlink.poll()}); see {launch.out / 'superlink.log'}"
    )


def _flwr_json(args: list[str], home: Path) -> dict[str, Any]:
    result = run_flwr([*args, "--format", "json"], flwr_home=home)
    try:
        return dict(json.loads(result.stdout[result.stdout.index("{") :]))
    except (ValueError, json.JSONDecodeError):
        raise FederationError(f"`flwr {args[0]}` failed: {(result.stderr or result.stdout).strip()[-500:]}") from None


def _enroll(key: Path, home: Path) -> None:
    answer = _flwr_json(["supernode", "register", str(key), CONNECTION], home)
    if not answer.get("success") and "already in use" not in str(answer.get("error-message", "")):
        raise FederationError(f"cannot enrol {key}: {answer.get('error-message', answer)}")


def _submit(launch: ServerLaunch, config: FederationConfig, home: Path) -> str:
    run_config = launch.out / "run_config.toml"
    lines = [f"{key} = {toml_value(value)}" for key, value in config.to_run_config().items()]
    atomic_write_bytes(run_config, ("\n".join(lines) + "\n").encode())
    answer = _flwr_json(["run", str(launch.app_dir), CONNECTION, "--run-config", str(run_config)], home)
    if not answer.get("success") or "run-id" not in answer:
        raise FederationError(f"the run was not accepted: {answer.get('error-message', answer)}")
    return str(answer["run-id"])


def _follow(
    launch: ServerLaunch,
    config: FederationConfig,
    home: Path,
    run_id: str,
    superlink: Any,
    on_round: RoundCallback | None,
) -> dict[str, Any]:
    """Report rounds as the server checkpoints them, until Flower says the run finished."""
    seen = 0
    checkpoints = Path(config.out_dir) / CHECKPOINT_DIR
    while True:
        if superlink.poll() is not None:
            raise FederationError(f"the SuperLink exited (code {superlink.poll()}); see {launch.out / 'superlink.log'}")
        if (checkpoints / STATE_FILE).exists():
            checkpoint = load_checkpoint(checkpoints)
            history = checkpoint.history if checkpoint is not None else []
            for record in history[seen:]:
                if record.get("round", 0) > 0 and on_round is not None:
                    on_round(record)
            seen = len(history)
        runs = _flwr_json(["list", CONNECTION, "--run-id", run_id], home).get("runs", [])
        status = str(runs[0].get("status", "")) if runs else ""
        if status.startswith("finished"):
            break
        time.sleep(2.0)
    metrics_path = Path(config.out_dir) / "metrics.json"
    if status != "finished:completed" or not metrics_path.exists():
        logs = run_flwr(["log", run_id, CONNECTION, "--show"], flwr_home=home, timeout=60).stdout.strip()
        tail = "\n".join(line for line in logs.splitlines()[-15:])
        raise FederationError(f"the run ended as {status or 'unknown'}; last ServerApp log lines:\n{tail}")
    return dict(json.loads(metrics_path.read_text()))
