"""Deployment on loopback: certificates, a TLS SuperLink with node authentication, two SuperNodes, two rounds.

Also: an unenrolled key is refused, a SuperNode trusting the wrong CA cannot connect, private keys are 0600 and no
secret appears in any log; both sites keep the client's default name, yet the server names each by the key the
operator enrolled, and every ledger head it witnessed passes the site-side audit. Bounded in time; marked slow.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from common.privacy.ledger import PrivacyLedger
from tests.helpers import write_jsonl

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fedtune(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.app", *args]


def client_start(superlink, data, ledger, ca, key, *extra: str) -> list[str]:
    """`fedtune client start` for one site, on a free local port."""
    site = ["--superlink", superlink, "--data", str(data), "--ledger", str(ledger), "--ca", str(ca), "--key", str(key)]
    return fedtune("client", "start", *site, "--port", str(free_port()), *extra)


def sample_file(path, size, seed):
    from common.data.sample import sample_dataset

    data = sample_dataset(size, seed=seed)
    return write_jsonl(
        path, [{"text": t, "label": data.label_names[y]} for t, y in zip(data.texts, data.labels, strict=True)]
    )


def flower_processes() -> list[str]:
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in listing if "flower-super" in line and "<defunct>" not in line]


def test_tls_federation_with_node_authentication(tiny_model_dir, tmp_path):
    run = lambda *a: subprocess.run(fedtune(*a), capture_output=True, text=True, timeout=60)  # noqa: E731
    assert run("certs", "init", "--out", str(tmp_path / "certs")).returncode == 0
    assert run("certs", "init", "--out", str(tmp_path / "wrong-ca")).returncode == 0
    for name in ("site-a", "site-b", "intruder"):
        assert run("certs", "node-key", name, "--out", str(tmp_path / "keys")).returncode == 0
    data = {s: sample_file(tmp_path / f"{s}.jsonl", 300, seed) for s, seed in (("site-a", 1), ("site-b", 2))}
    evaluation = sample_file(tmp_path / "eval.jsonl", 120, 3)
    port = free_port()
    superlink = f"127.0.0.1:{port}"
    out = tmp_path / "run"
    logs = tmp_path / "logs"
    logs.mkdir()

    server = subprocess.Popen(
        fedtune(
            "server",
            "start",
            "--out",
            str(out),
            "--certs",
            str(tmp_path / "certs"),
            "--enroll",
            f"hospital-a={tmp_path / 'keys' / 'site-a.pub'}",  # named by the operator
            "--enroll",
            str(tmp_path / "keys" / "site-b.pub"),  # named after the key file: site-b
            "--port",
            str(port),
            "--model",
            str(tiny_model_dir),
            "--rounds",
            "2",
            "--max-length",
            "24",
            "--batch-size",
            "32",
            "--eval-data",
            str(evaluation),
            "--no-federated-eval",
        ),
        stdout=(logs / "server.out").open("w"),
        stderr=subprocess.STDOUT,
    )
    clients = []
    try:
        # Sites join once the server has enrolled their keys (a key not yet enrolled is refused, by design).
        deadline = time.monotonic() + 120
        while "waiting for sites" not in (logs / "server.out").read_text():
            assert server.poll() is None and time.monotonic() < deadline, (logs / "server.out").read_text()
            time.sleep(0.5)
        for name in ("site-a", "site-b"):
            clients.append(
                subprocess.Popen(
                    client_start(
                        superlink,
                        data[name],
                        tmp_path / f"{name}-ledger.jsonl",
                        tmp_path / "certs" / "ca.pem",
                        tmp_path / "keys" / f"{name}.key",
                        *("--max-epsilon", "8"),  # both sites keep the default --site-name
                    ),
                    stdout=(logs / f"{name}.out").open("w"),
                    stderr=subprocess.STDOUT,
                )
            )

        # A SuperNode that trusts another CA cannot connect: clear error, non-zero exit, before any SuperNode starts.
        wrong = subprocess.run(
            client_start(
                superlink,
                data["site-a"],
                tmp_path / "x-ledger.jsonl",
                tmp_path / "wrong-ca" / "ca.pem",
                tmp_path / "keys" / "site-a.key",
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert wrong.returncode == 5, wrong.stderr
        assert "does not verify against" in wrong.stderr

        # An unenrolled key is refused by the SuperLink.
        intruder = subprocess.run(
            client_start(
                superlink,
                data["site-b"],
                tmp_path / "intruder-ledger.jsonl",
                tmp_path / "certs" / "ca.pem",
                tmp_path / "keys" / "intruder.key",
                *("--max-retries", "1"),
            ),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert intruder.returncode == 6, intruder.stderr[-2000:]
        assert "enrolled" in intruder.stderr

        assert server.wait(timeout=420) == 0, (logs / "server.out").read_text()[-3000:]
    finally:
        for process in [server, *clients]:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()

    printed = (logs / "server.out").read_text()
    assert "TLS + SuperNode authentication" in printed and "round=2" in printed
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    report = json.loads((out / "privacy_report.json").read_text())
    assert sorted(report["sites"]) == ["hospital-a", "site-b"]  # not one merged "site" entry
    identities = json.loads((out / "identities.json").read_text())["sites"]
    assert sorted((e["name"], e["source"]) for e in identities) == [("hospital-a", "enrolled"), ("site-b", "enrolled")]
    assert all(e["key_fingerprint"].startswith("SHA256:") for e in identities)
    assert sorted((w["site"], w["round"]) for w in report["witnesses"]) == [
        ("hospital-a", 1),
        ("hospital-a", 2),
        ("site-b", 1),
        ("site-b", 2),
    ]
    for name in ("site-a", "site-b"):
        ledger = PrivacyLedger(tmp_path / f"{name}-ledger.jsonl").snapshot()
        assert len(ledger.reservations()) == 2 and len(ledger.committed) == 2
        audit = run("audit", str(tmp_path / f"{name}-ledger.jsonl"), "--witness", str(out / "privacy_report.json"))
        assert audit.returncode == 0 and "every witnessed head is in the ledger" in audit.stdout, audit.stderr
    assert not (tmp_path / "intruder-ledger.jsonl").exists()

    for key in [*(tmp_path / "keys").glob("*.key"), *(tmp_path / "certs").glob("*.key")]:
        assert os.stat(key).st_mode & 0o777 == 0o600, key
    secrets = [key.read_text().strip().splitlines()[1] for key in (tmp_path / "keys").glob("*.key")]
    secrets += [key.read_text().strip().splitlines()[1] for key in (tmp_path / "certs").glob("*.key")]
    everything = "".join(p.read_text(errors="replace") for p in [*logs.iterdir(), *out.glob("*.log")])
    assert "PRIVATE KEY" not in everything
    assert not any(secret in everything for secret in secrets)

    deadline = time.monotonic() + 30
    while flower_processes() and time.monotonic() < deadline:
        time.sleep(1)
    assert not flower_processes(), flower_processes()
