"""``fedtune simulate`` end to end on Flower's simulation engine (Ray), with a tiny model: 3 sites, 2 rounds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common.privacy.ledger import PrivacyLedger

pytestmark = pytest.mark.slow


def simulate(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli.app", "simulate", *args], capture_output=True, text=True, timeout=timeout
    )


def ray_processes() -> list[str]:
    """Live Ray processes (exited ones awaiting reaping by init, shown as <defunct>, are not running)."""
    listing = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [
        line
        for line in listing
        if ("raylet" in line or "gcs_server" in line or "ray::" in line) and "<defunct>" not in line
    ]


def test_simulate_three_sites_two_rounds_then_a_crashed_site_fails_loudly(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    common = ["--model", str(tiny_model_dir), "--max-length", "24", "--batch-size", "32", "--out", str(out)]
    done = simulate([*common, "--sites", "3", "--rounds", "2", "--seed", "0", "--epsilon", "6"])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "round=2" in done.stdout and "crashed=0" in done.stdout
    for name in ("metrics.json", "privacy_report.json", "progress.png", "run_config.json", "sites.json"):
        assert (out / name).is_file(), name
    assert (out / "adapter" / "adapter_config.json").is_file()
    report = json.loads((out / "privacy_report.json").read_text())
    assert sorted(report["sites"]) == ["site-0", "site-1", "site-2"]
    for site, rows in report["sites"].items():
        assert [r["round"] for r in rows] == [1, 2]
        assert 0 < rows[0]["epsilon_spent"] < rows[1]["epsilon_spent"] <= 6.0
        ledger = PrivacyLedger(out / "sites" / site / "ledger.jsonl").snapshot()  # verifies the chain
        assert len(ledger.committed) == 2
    assert not ray_processes(), "the simulation left Ray processes behind"

    # A site whose data breaks after the start crashes in its ClientApp: Flower would call the run completed;
    # fedtune must fail loudly and name the site. (--resume re-runs from the checkpoint with more rounds.)
    (out / "sites" / "site-1" / "train.jsonl").write_text('{"text": "", "label": "negative"}\n')
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["completed_rounds"] == 2
    crashed = simulate([*common, "--resume", "--rounds", "3", "--seed", "0", "--epsilon", "6"])
    assert crashed.returncode != 0
    assert "site crash" in crashed.stderr and "is empty" in crashed.stderr, crashed.stderr[-3000:]
    assert not ray_processes()


def test_simulate_generate_with_a_tiny_causal_lm_then_generate_from_its_adapter(tmp_path):
    """The issue's end to end: ``simulate --task generate`` (2 sites, 2 rounds) writes an adapter ``generate`` loads."""
    from tests.causal_helpers import build_tiny_llama

    model = build_tiny_llama(tmp_path / "llama")
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"the w{i} w{(7 * i) % 80}", "response": f"w{(7 * i) % 80} w{i}"} for i in range(80)]
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "run"
    run = ["--model", str(model), "--task", "generate", "--data", str(pairs), "--sites", "2", "--rounds", "2"]
    small = ["--seed", "0", "--max-length", "32", "--eval-generations", "4", "--max-new-tokens", "4"]
    done = simulate([*run, *small, "--out", str(out)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "round=2" in done.stdout and "trained=2" in done.stdout and "server ROUGE-L=" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rounds"][-1]["server_eval"]["rouge_l"] is not None
    info = json.loads((out / "adapter" / "fedtune_model.json").read_text())
    assert info["task"] == "generate" and info["max_length"] == 32
    for site in ("site-0", "site-1"):
        assert len(PrivacyLedger(out / "sites" / site / "ledger.jsonl").snapshot().committed) == 2

    command = [sys.executable, "-m", "cli.app", "generate", "--adapter", str(out / "adapter"), "--prompt", "the w1 w7"]
    generated = subprocess.run(
        [*command, "--max-new-tokens", "3", "--out", str(tmp_path / "gen.jsonl")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert generated.returncode == 0, generated.stderr[-3000:]
    (line,) = (tmp_path / "gen.jsonl").read_text().splitlines()
    assert json.loads(line)["prompt"] == "the w1 w7"
