"""Run a data-owning site: checks first, then a Flower SuperNode carrying the site's own settings.

``fedtune client start`` = this module. Before anything connects:

* the data file is read and validated completely (a bad file is one clear error);
* the ledger is read and verified, and a dataset that has already spent its limit refuses to start;
* the federation CA and the site's authentication key are checked, and the live SuperLink's certificate is verified
  against the CA (a wrong CA fails here, with the reason, instead of a SuperNode retrying forever).

The SuperNode then runs in the foreground with TLS and node authentication (plaintext only with an explicit
``insecure``). The site's settings travel as node config; no run config from the server can change them.

Its local runtime API port is checked before it starts (a busy port is one error naming ``--port``). Ctrl-C or
SIGTERM stops the SuperNode and every process it started (SuperExec, ClientApps) within :data:`STOP_GRACE` +
:data:`KILL_WAIT` seconds, so the command ends within 5 s and leaves nothing running.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from common.certs.checks import check_ca, probe_tls
from common.certs.node_keys import load_node_private_key
from common.data.pairs import read_pairs_file
from common.data.readers import read_labeled_file
from common.errors import BudgetExhaustedError, ConfigError, FederationError
from common.federation.site import SiteSettings
from common.polling import wait_until
from common.processes import (
    ProcessIdentity,
    ProcessTree,
    flower_environment,
    flower_executable,
    interrupts_ignored,
    sigterm_as_interrupt,
)
from common.training.preflight import check_ledger_location, check_signing_key_file

log = logging.getLogger(__name__)

#: What flower-supernode prints when the SuperLink did not let it join (Flower docs: ref-exit-codes/305).
NOT_ACTIVATED_MARKERS = ("Exit Code: 305", "Failed to activate SuperNode")
#: What flower-supernode prints (asyncio, via uvicorn) when its runtime API cannot bind its port.
BIND_FAILED_MARKER = "error while attempting to bind on address"
#: The interface of the SuperNode's runtime API, passed as its --host (Flower's default too): the API serves this
#: host's SuperExec and ClientApps only and must not be reachable from other machines.
RUNTIME_HOST = "127.0.0.1"
#: Seconds the SuperNode and its helpers get to end after SIGTERM, then the longest wait after SIGKILL (reached only
#: if a process survives SIGKILL). With a ClientApp running, the SuperNode does not end within 2 s of SIGTERM (Flower's
#: exit handlers wait for its HTTP server and telemetry), and this interpreter's own exit took 1-2.5 s (torch was
#: imported by every command): a short grace keeps `fedtune client start` within 5 s of Ctrl-C or SIGTERM.
STOP_GRACE = 1.5
KILL_WAIT = 1.0
#: How often the running SuperNode is looked at: whether it has exited, and which processes it has started.
WATCH_INTERVAL = 1.0


@dataclass(frozen=True)
class ClientLaunch:
    """Where the site connects and with which credentials."""

    superlink: str
    ca: Path | None
    key: Path | None
    insecure: bool = False
    runtime_port: int = 9094
    max_retries: int = 10
    connect_timeout: float = 60.0
    threads: int | None = None  # CPU threads of the ClientApps (OMP_NUM_THREADS, inherited by every process)
    trusted_entities: Path | None = None  # only app bundles signed by these keys may run (Flower's --trusted-entities)


def preflight(site: SiteSettings, launch: ClientLaunch) -> str:
    """All checks before connecting; returns how the connection will be secured (e.g. 'TLSv1.3')."""
    # Validated with the site's own label set, which every run's labels must then equal (names and order), or as
    # the prompt/response pairs of a generate site.
    data = (
        read_pairs_file(site.data_path, site.pair_spec())
        if site.task == "generate"
        else read_labeled_file(site.data_path, site.data_spec())
    )
    check_ledger_location(site.ledger_path, name="ledger-path")
    check_signing_key_file(site.signing_key, name="signing-key")
    ledger = site.budget.open_ledger()
    # Every record of the file: if any of them cannot train, the site cannot join (a round would be refused).
    dataset = ledger.dataset(data.texts, dataset_id=str(site.data_path), source=(data.fingerprint, data.texts))
    try:
        ledger.check_trainable(dataset, delta=site.delta, limit=site.max_epsilon)
    except BudgetExhaustedError as exc:
        raise BudgetExhaustedError(f"{exc}; refusing to start") from None
    _check_credentials(launch)
    check_runtime_port(launch.runtime_port)
    if launch.insecure:
        return "plaintext (--insecure)"
    assert launch.ca is not None
    return probe_tls(launch.superlink, launch.ca, timeout=launch.connect_timeout)


def _check_credentials(launch: ClientLaunch) -> None:
    """The files TLS and node authentication need (or their absence with ``insecure``); no network yet."""
    if launch.insecure:
        if launch.key is not None:
            raise ConfigError("--key needs TLS: SuperNode authentication is not available with --insecure")
        return
    if launch.ca is None or launch.key is None:
        raise ConfigError("TLS is on by default: pass --ca CA.pem and --key SITE.key, or --insecure")
    check_ca(launch.ca)
    load_node_private_key(launch.key)


def check_runtime_port(port: int) -> None:
    """ConfigError naming ``--port`` unless the SuperNode's runtime API could bind ``port`` now.

    The bind is the one flower-supernode makes (uvicorn -> asyncio ``create_server``: IPv4, SO_REUSEADDR, on
    :data:`RUNTIME_HOST`), so a port in TIME_WAIT passes and a listening one fails, as they would for Flower. The
    port is free when checked, not reserved: another process can take it before the SuperNode binds it. That
    failure is recognised in the SuperNode's output and reported the same way (:func:`run_supernode`).
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((RUNTIME_HOST, port))
    except OSError as exc:
        raise ConfigError(_port_unavailable(port, exc.strerror or str(exc))) from None


def pick_runtime_port() -> int:
    """A port the OS reports free on :data:`RUNTIME_HOST` now (what ``--port 0`` uses; free, not reserved)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((RUNTIME_HOST, 0))
        return int(probe.getsockname()[1])


def _port_unavailable(port: int, reason: str) -> str:
    return (
        f"this site's local runtime port {RUNTIME_HOST}:{port} is not available ({reason.lower()}): choose "
        f"another with --port, e.g. --port {pick_runtime_port()}, or --port 0 to pick a free one"
    )


def node_config_string(site: SiteSettings) -> str:
    """``--node-config`` for flower-supernode: the site's settings as space-separated ``key=VALUE`` TOML pairs.

    Flower splits this string with a pattern before parsing each pair as TOML (``flwr.common.config.
    parse_config_args``): a value is a ``'single-quoted'`` or ``"double-quoted"`` string ending at the next quote
    of its kind, or a run of non-space characters. Values are written by ``tomli_w`` (a string becomes a basic
    ``"..."`` string, escapes included); a string containing ``"``, which would end Flower's match at its escaped
    quote, is written as a TOML literal ``'...'`` string instead, which is possible unless it also contains ``'``
    or a control character. Such a value cannot reach a SuperNode and is refused with the key named.
    """
    return " ".join(f"{key}={_node_config_value(key, value)}" for key, value in site.to_node_config().items())


def _node_config_value(key: str, value: bool | int | float | str) -> str:
    if not isinstance(value, str) or '"' not in value:
        return tomli_w.dumps({"v": value}).removeprefix("v = ").rstrip("\n")
    if "'" not in value and not any(ord(c) < 32 or ord(c) == 127 for c in value if c != "\t"):
        return f"'{value}'"
    raise FederationError(
        f"cannot pass {key}={value!r} to flower-supernode: Flower's --node-config cannot carry a value with both "
        "quote kinds (or a double quote and a control character)"
    )


def supernode_command(site: SiteSettings, launch: ClientLaunch) -> list[str]:
    """The flower-supernode command line."""
    command = [
        flower_executable("flower-supernode"),
        "--superlink",
        launch.superlink,
        "--host",
        RUNTIME_HOST,
        "--port",
        str(launch.runtime_port),
        "--max-retries",
        str(launch.max_retries),
        "--node-config",
        node_config_string(site),
    ]
    if launch.insecure:
        return [*command, "--insecure"]
    assert launch.ca is not None and launch.key is not None
    return [*command, "--root-certificates", str(launch.ca), "--auth-supernode-private-key", str(launch.key)]


def supernode_environment(launch: ClientLaunch) -> dict[str, str]:
    """The SuperNode's environment; its SuperExec and every ClientApp process inherit it.

    torch sizes its CPU thread pool from OMP_NUM_THREADS when it starts: the only way to reach the ClientApp
    processes a SuperNode starts for each message.
    """
    return flower_environment({"OMP_NUM_THREADS": str(launch.threads)} if launch.threads else None)


def run_supernode(site: SiteSettings, launch: ClientLaunch) -> int:
    """Run the SuperNode in the foreground until it exits; 130 after Ctrl-C or SIGTERM, 0 after a clean end.

    Its output is passed through. Flower exits with status 1 for every error, so two failures are recognised from
    its output: the refusal of an unenrolled key (exit code 305 printed, "Failed to activate SuperNode") and a
    runtime port taken since :func:`check_runtime_port`. Whichever way it ends, the SuperNode and every process it
    started are stopped (:class:`ProcessTree`) before this returns; the tree is tracked while the SuperNode runs, so
    its helpers are found even if it dies first.
    """
    noted: list[str] = []
    process: subprocess.Popen[str] | None = None
    tree: ProcessTree | None = None
    reader: threading.Thread | None = None
    interrupted = False
    with sigterm_as_interrupt():  # entered before the SuperNode exists: no signal can orphan it
        try:
            process = subprocess.Popen(
                supernode_command(site, launch),
                start_new_session=True,
                env=supernode_environment(launch),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            tree = ProcessTree(ProcessIdentity.of(process.pid))
            reader = threading.Thread(target=_pass_through, args=(process, noted), daemon=True)
            reader.start()
            running = tree
            # Looked at without reaping it: an exited SuperNode stays a zombie until the stop below, and while it
            # does, its session still finds the helpers it left behind.
            wait_until(
                lambda: not (running.track() and running.identity.is_running()), timeout=None, interval=WATCH_INTERVAL
            )
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if process is not None:
                with interrupts_ignored():  # a second Ctrl-C or SIGTERM must not cut the stop short
                    if tree is None:  # interrupted right after the start: the SuperNode is not reaped yet
                        tree = ProcessTree(ProcessIdentity.of(process.pid))
                    tree.stop(grace=STOP_GRACE, kill_wait=KILL_WAIT)
                    with contextlib.suppress(subprocess.TimeoutExpired):  # only if it survived SIGKILL (logged)
                        process.wait(timeout=KILL_WAIT)
                    if reader is not None:
                        reader.join(timeout=KILL_WAIT)  # every writer of its pipe has ended: the output is complete
    if interrupted or process is None:
        return 130
    return _outcome(process.returncode, noted, launch)


def _pass_through(process: subprocess.Popen[str], noted: list[str]) -> None:
    """Copy the SuperNode's output to ours, noting the lines that explain a failure."""
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if BIND_FAILED_MARKER in line or any(marker in line for marker in NOT_ACTIVATED_MARKERS):
            noted.append(line)


def _outcome(code: int, noted: list[str], launch: ClientLaunch) -> int:
    """0 for a SuperNode that ended cleanly (or was terminated); otherwise the error its output explains."""
    if code in (0, -signal.SIGTERM):
        return 0
    if any(BIND_FAILED_MARKER in line for line in noted):
        # the port was free at the preflight check and taken before the SuperNode bound it
        reason = next(line for line in noted if BIND_FAILED_MARKER in line).rsplit("): ", 1)[-1].strip()
        raise ConfigError(_port_unavailable(launch.runtime_port, reason))
    if noted:
        raise FederationError(
            f"the SuperLink at {launch.superlink} did not let this SuperNode join: is this site's public key "
            f"(the .pub of {launch.key}) enrolled by the server operator?"
        )
    raise FederationError(f"flower-supernode exited with code {code}")
