"""Per-round latency of a deployed federation (TLS SuperLink + authenticated SuperNodes on loopback) vs a simulated one.

Both arms run the same fedtune ServerApp and ClientApp through the CLI a user runs (`fedtune server start` + two
`fedtune client start`, and `fedtune simulate --site-data A --site-data B`) with the same model, data, rounds and
seed; the round durations come from each run's metrics.json, timed identically by the ServerApp. The arms alternate
(deployed, simulated, deployed, ...); round 1 carries start-up (processes, model loading, noise calibration) and is
reported apart; the ratio is of the medians of the later rounds. Each site also reports its pure training time, which
separates training from transport and process overhead (a Flower 1.41 SuperNode starts a fresh ClientApp process,
which imports torch and loads the model, for every message; the simulation keeps its workers). The deployed sites
share this one machine, so each gets its own share of the cores (CPU affinity and `--threads`), standing for a
machine of its own; the simulation runs one site at a time on all cores. (Without the split, the sites' torch
thread pools contend and site training was measured 10x slower than simulated.)

    python -m simulations.benchmarks.deploy_latency [--model DIR|ID] [--rounds 4] [--repeats 2] [--site-size 400]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def main() -> None:
    """Run the arms alternately and print per-round latencies and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each arm, alternated")
    parser.add_argument("--site-size", type=int, default=400, help="examples per site (built-in sample data)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    work = args.out or Path(tempfile.mkdtemp(prefix="fedtune-latency-"))
    work.mkdir(parents=True, exist_ok=True)
    for name, seed in (("site-a", 1), ("site-b", 2), ("eval", 3)):
        if not (work / f"{name}.jsonl").exists():
            _fedtune(
                "sample-data", "--out", str(work / f"{name}.jsonl"), "--size", str(args.site_size), "--seed", str(seed)
            )
    if not (work / "certs" / "ca.pem").exists():
        _fedtune("certs", "init", "--out", str(work / "certs"))
    for name in ("site-a", "site-b"):
        if not (work / "keys" / f"{name}.key").exists():
            _fedtune("certs", "node-key", name, "--out", str(work / "keys"))
    common = ["--model", args.model, "--rounds", str(args.rounds), "--eval-data", str(work / "eval.jsonl")]
    common += ["--no-federated-eval", "--seed", "0"]

    arms: dict[str, list[dict[str, Any]]] = {"deployed": [], "simulated": []}
    for repeat in range(args.repeats):
        for arm in arms:
            out = work / f"{arm}-{repeat}"
            run = _deployed(work, out, common) if arm == "deployed" else _simulated(work, out, common)
            arms[arm].append(run)
            print(f"{arm} #{repeat + 1}: rounds " + ", ".join(f"{s:.1f}" for s in run["rounds"]) + " s", flush=True)

    print(
        f"\nmodel {args.model}, 2 sites x {args.site_size} examples, {args.rounds} rounds, {args.repeats} runs per arm"
    )
    print(f"{'arm':<12}{'round 1 (s)':>13}{'later rounds, median (s)':>27}{'site training, median (s)':>28}")
    medians = {}
    for arm, runs in arms.items():
        first = statistics.median(r["rounds"][0] for r in runs)
        medians[arm] = statistics.median(s for r in runs for s in r["rounds"][1:])
        training = statistics.median(s for r in runs for s in r["training"][1:])
        print(f"{arm:<12}{first:>13.1f}{medians[arm]:>27.1f}{training:>28.1f}")
    print(f"deployed / simulated per-round latency (later rounds): {medians['deployed'] / medians['simulated']:.2f}")


def _fedtune(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "cli.app", *args], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"fedtune {' '.join(args[:2])} failed: {result.stderr.strip()[-2000:]}")
    return result


def _cores(index: int, sites: int) -> set[int]:
    """A site's share of the machine's cores: on one host the sites stand for separate machines."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    share = max(1, len(cores) // sites)
    return set(cores[(index * share) % len(cores) :][:share])


def _pin(index: int, sites: int) -> Callable[[], None] | None:
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = _cores(index, sites)
    return lambda: os.sched_setaffinity(0, cores)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _rounds(out: Path) -> dict[str, list[float]]:
    records = json.loads((out / "metrics.json").read_text())["rounds"]
    records = [r for r in records if r["round"] >= 1]
    return {
        "rounds": [r["seconds"] for r in records],
        "training": [max(s["metrics"].get("train-seconds", 0.0) for s in r["sites"]) for r in records],
    }


def _simulated(work: Path, out: Path, common: list[str]) -> dict[str, list[float]]:
    sites = ["--site-data", str(work / "site-a.jsonl"), "--site-data", str(work / "site-b.jsonl")]
    _fedtune("simulate", *sites, *common, "--out", str(out))
    return _rounds(out)


def _deployed(work: Path, out: Path, common: list[str]) -> dict[str, list[float]]:
    port = _free_port()
    enroll = [arg for name in ("site-a", "site-b") for arg in ("--enroll", str(work / "keys" / f"{name}.pub"))]
    log = (work / f"{out.name}-server.log").open("w")
    start = ["server", "start", "--certs", str(work / "certs"), *enroll, "--port", str(port), *common]
    server = subprocess.Popen(
        [sys.executable, "-m", "cli.app", *start, "--out", str(out)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    clients = []
    try:
        while "waiting for sites" not in (work / f"{out.name}-server.log").read_text():
            if server.poll() is not None:
                raise SystemExit(f"fedtune server start failed; see {log.name}")
            time.sleep(0.5)
        for index, name in enumerate(("site-a", "site-b")):
            site = [
                *("client", "start", "--superlink", f"127.0.0.1:{port}", "--site-name", name),
                *("--ca", str(work / "certs" / "ca.pem"), "--key", str(work / "keys" / f"{name}.key")),
                *("--data", str(work / f"{name}.jsonl"), "--ledger", str(out.with_name(f"{out.name}-{name}.jsonl"))),
                *("--max-epsilon", "100", "--port", str(_free_port()), "--threads", str(len(_cores(index, 2)))),
            ]
            clients.append(
                subprocess.Popen(
                    [sys.executable, "-m", "cli.app", *site],
                    stdout=(work / f"{out.name}-{name}.log").open("w"),
                    stderr=subprocess.STDOUT,
                    preexec_fn=_pin(index, sites=2),
                )
            )
        if server.wait(timeout=3600) != 0:
            raise SystemExit(f"fedtune server start failed; see {log.name}")
    finally:
        for process in [server, *clients]:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=60)
    return _rounds(out)


if __name__ == "__main__":
    main()
