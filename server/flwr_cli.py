"""Every call fedtune makes to Flower's ``flwr`` CLI, and the one place that reads its output.

The coordinator drives a SuperLink through ``flwr``: enrolment (``flwr supernode register --name``, whose answer
names the node id bound to the key: :mod:`server.identities`), submission
(``flwr run``), run status (``flwr list``) and logs (``flwr log``). Each call uses a private ``FLWR_HOME`` inside the
run directory whose ``config.toml`` names one connection, never the user's own Flower configuration. Answers are
read from ``--format json``; Flower may print other lines before the JSON object, so the object is taken from the
first ``{`` on. Both TOML files handed to Flower (the connection and the run config) are written with ``tomli_w``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from common.errors import FederationError
from common.fileio import atomic_write_bytes
from common.processes import run_flwr

#: The name of the one connection in the private FLWR_HOME.
CONNECTION = "fedtune"
FLWR_HOME = "flwr-home"
RUN_CONFIG_FILE = "run_config.toml"
#: What ``flwr supernode register`` answers for a key that is already enrolled (enrolling again is not an error).
ALREADY_ENROLLED = "already in use"


def connection_config(address: str, *, ca: Path | None) -> dict[str, Any]:
    """The ``config.toml`` of a FLWR_HOME whose default connection reaches ``address``.

    ``ca`` is the federation CA the CLI verifies the SuperLink against; ``None`` means plaintext (``--insecure``).
    """
    connection: dict[str, Any] = {"address": address}
    if ca is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(ca.resolve())
    return {"superlink": {"default": CONNECTION, CONNECTION: connection}}


def write_run_config(path: Path, run_config: Mapping[str, bool | int | float | str]) -> Path:
    """Write the flat run config as the TOML file ``flwr run --run-config`` reads."""
    atomic_write_bytes(path, tomli_w.dumps(dict(run_config)).encode())
    return path


@dataclass(frozen=True)
class FlwrCli:
    """The ``flwr`` CLI against the connection configured in ``home`` (a private FLWR_HOME)."""

    home: Path

    @classmethod
    def connect(cls, run_dir: Path, address: str, *, ca: Path | None) -> FlwrCli:
        """Create ``run_dir/flwr-home`` whose connection ``fedtune`` reaches the SuperLink at ``address``."""
        home = run_dir / FLWR_HOME
        atomic_write_bytes(home / "config.toml", tomli_w.dumps(connection_config(address, ca=ca)).encode())
        return cls(home)

    def register(self, public_key: Path, name: str) -> int | None:
        """Enrol a SuperNode's public key under the operator's ``name``: only enrolled SuperNodes may join.

        Returns the node id the SuperLink bound to the key (a SuperNode gets it only by proving it holds the private
        key), or None for a key already enrolled (enrolling again is not an error; the SuperLink does not say which
        node id it has).
        """
        answer = self._json(["supernode", "register", str(public_key), CONNECTION, "--name", name])
        if not answer.get("success"):
            if ALREADY_ENROLLED in str(answer.get("error-message", "")):
                return None
            raise FederationError(f"cannot enrol {public_key}: {answer.get('error-message', answer)}")
        node_id = answer.get("node-id")
        if isinstance(node_id, bool) or not isinstance(node_id, int) or node_id <= 1:
            raise FederationError(f"`flwr supernode register` enrolled {public_key} but answered no node id: {answer}")
        return node_id

    def submit(self, app_dir: Path, run_config: Path) -> str:
        """Start the Flower app in ``app_dir`` with the run config file ``run_config``; returns the run id."""
        answer = self._json(["run", str(app_dir), CONNECTION, "--run-config", str(run_config)])
        if not answer.get("success") or "run-id" not in answer:
            raise FederationError(f"the run was not accepted: {answer.get('error-message', answer)}")
        return str(answer["run-id"])

    def status(self, run_id: str) -> str:
        """The run's status as Flower spells it (``running``, ``finished:completed``, ...); "" if not listed."""
        runs = self._json(["list", CONNECTION, "--run-id", run_id]).get("runs", [])
        return str(runs[0].get("status", "")) if runs else ""

    def log_tail(self, run_id: str, lines: int = 15) -> str:
        """The last ``lines`` lines of the run's ServerApp log."""
        logs = run_flwr(["log", run_id, CONNECTION, "--show"], flwr_home=self.home, timeout=60).stdout.strip()
        return "\n".join(logs.splitlines()[-lines:])

    def _json(self, args: list[str]) -> dict[str, Any]:
        result = run_flwr([*args, "--format", "json"], flwr_home=self.home)
        return parse_json_answer(args[0], result.stdout, result.stderr)


def parse_json_answer(command: str, stdout: str, stderr: str = "") -> dict[str, Any]:
    """The JSON object a ``flwr COMMAND --format json`` printed (from its first ``{``); FederationError if none."""
    try:
        answer = json.loads(stdout[stdout.index("{") :])
    except ValueError:  # no "{" at all, or not JSON from there on (json.JSONDecodeError is a ValueError)
        answer = None
    if not isinstance(answer, dict):
        raise FederationError(f"`flwr {command}` failed: {(stderr or stdout).strip()[-500:]}")
    return answer
