"""Run a data-owning site: checks first, then a Flower SuperNode carrying the site's own settings.

``fedtune client start`` = this module. Before anything connects:

* the data file is read and validated completely (a bad file is one clear error);
* the ledger is read and verified, and a dataset that has already spent its limit refuses to start;
* the federation CA and the site's authentication key are checked, and the live SuperLink's certificate is verified
  against the CA (a wrong CA fails here, with the reason, instead of a SuperNode retrying forever).

The SuperNode then runs in the foreground with TLS and node authentication (plaintext only with an explicit
``insecure``). The site's settings travel as node config; no run config from the server can change them.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from common.certs.checks import check_ca, probe_tls
from common.certs.node_keys import load_node_private_key
from common.data.readers import read_labeled_file
from common.data.spec import DataSpec
from common.errors import BudgetExhaustedError, ConfigError, FederationError
from common.federation.site import SiteSettings
from common.privacy.ledger import DatasetRef
from common.processes import ProcessIdentity, flower_environment, flower_executable, sigterm_as_interrupt, stop

log = logging.getLogger(__name__)

#: What flower-supernode prints when the SuperLink did not let it join (Flower docs: ref-exit-codes/305).
NOT_ACTIVATED_MARKERS = ("Exit Code: 305", "Failed to activate SuperNode")


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
    # The run's label set is not known before connecting: validate with the labels the file itself declares.
    data = read_labeled_file(site.data_path, DataSpec(text_column=site.text_column, label_column=site.label_column))
    dataset = DatasetRef(fingerprint=data.fingerprint, dataset_id=str(site.data_path), num_examples=len(data))
    try:
        site.budget.open_ledger().check_trainable(dataset, delta=site.delta, limit=site.max_epsilon)
    except BudgetExhaustedError as exc:
        raise BudgetExhaustedError(f"{exc}; refusing to start") from None
    if launch.insecure:
        if launch.key is not None:
            raise ConfigError("--key needs TLS: SuperNode authentication is not available with --insecure")
        return "plaintext (--insecure)"
    if launch.ca is None or launch.key is None:
        raise ConfigError("TLS is on by default: pass --ca CA.pem and --key SITE.key, or --insecure")
    check_ca(launch.ca)
    load_node_private_key(launch.key)
    return probe_tls(launch.superlink, launch.ca, timeout=launch.connect_timeout)


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
    """Run the SuperNode in the foreground until it exits (Ctrl-C or SIGTERM stops it and its ClientApps).

    Its output is passed through; Flower exits with status 1 for every error, so the refusal of an unenrolled key
    is recognised from the exit code Flower prints (305, "Failed to activate SuperNode").
    """
    process = subprocess.Popen(
        supernode_command(site, launch),
        start_new_session=True,
        env=supernode_environment(launch),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []

    def pump() -> None:  # pass the SuperNode's output through, remembering whether it was refused
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if any(marker in line for marker in NOT_ACTIVATED_MARKERS):
                seen.append(line)

    identity = ProcessIdentity.of(process.pid)
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        with sigterm_as_interrupt():
            code = process.wait()
    except KeyboardInterrupt:
        stop(identity)
        return 130
    finally:
        # The SuperNode's helpers (its SuperExec) share its process group and would outlive it otherwise.
        stop(identity, grace=2.0)
        reader.join(timeout=5.0)
    refused = bool(seen)
    if code != 0 and refused:
        raise FederationError(
            f"the SuperLink at {launch.superlink} did not let this SuperNode join: is this site's public key "
            f"(the .pub of {launch.key}) enrolled by the server operator?"
        )
    if code not in (0, -signal.SIGTERM):
        raise FederationError(f"flower-supernode exited with code {code}")
    return 0
