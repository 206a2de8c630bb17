"""The utility benchmark's summary arithmetic (synthetic numbers), and one ``--quick`` smoke run with a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from simulations.benchmarks.utility import (
    FALLBACK_EPOCHS,
    dataset_summary,
    format_epsilon,
    format_table,
    gap_points,
    largest_late_drop,
    nodp_epochs,
)
from simulations.benchmarks.utility_arms import ArmResult


def test_largest_late_drop_is_the_worst_second_half_round_against_the_round_before():
    # R = 3: rounds 2 and 3 are late; round 3 loses 1.5 points against round 2.
    curve = [(0, 0.50), (1, 0.80), (2, 0.82), (3, 0.805)]
    drop, where = largest_late_drop(curve)
    assert drop == pytest.approx(1.5)
    assert where == 3


def test_a_first_half_drop_does_not_count_and_gains_are_negative():
    # R = 5: late rounds are 3, 4, 5 (all gain); the 5-point loss of round 2 is in the first half.
    curve = [(0, 0.5), (1, 0.90), (2, 0.85), (3, 0.86), (4, 0.87), (5, 0.875)]
    drop, where = largest_late_drop(curve)
    assert drop == pytest.approx(-0.5)
    assert where == 5


def test_round_one_against_the_untrained_adapter_is_not_a_late_drop():
    assert largest_late_drop([(0, 0.9), (1, 0.5)]) is None
    assert largest_late_drop([]) is None


def test_gap_is_in_points_and_signed():
    assert gap_points(0.81, 0.85) == pytest.approx(-4.0)
    assert gap_points(0.90, 0.85) == pytest.approx(5.0)
    assert gap_points(None, 0.85) is None


def test_epsilon_formatting():
    assert format_epsilon(7.9912, private=True) == "7.99"
    assert format_epsilon(None, private=True) == "-"
    assert format_epsilon(None, private=False) == "inf (no DP)"
    assert format_epsilon(3.0, private=False) == "inf (no DP)"


def test_nodp_epochs_match_the_federated_passes_or_fall_back():
    fed = ArmResult("sst2", "fed-dp", private=True, unit="rounds", example_passes=96_300.0)
    assert nodp_epochs(fed, 16_000)[0] == 6
    assert nodp_epochs(ArmResult("x", "fed-dp", private=True, unit="rounds"), 100)[0] == FALLBACK_EPOCHS
    assert nodp_epochs(None, 100)[0] == FALLBACK_EPOCHS


def _arms() -> list[ArmResult]:
    return [
        ArmResult(
            "sst2",
            "fed-dp",
            True,
            "rounds",
            count=3,
            accuracy=0.80,
            macro_f1=0.79,
            epsilon=7.96,
            curve=[(0, 0.5), (1, 0.7), (2, 0.81), (3, 0.80)],
            example_passes=96_000,
            seconds=600,
        ),
        ArmResult("sst2", "central-dp", True, "epochs", count=4, accuracy=0.83, macro_f1=0.82, epsilon=8.0),
        ArmResult("sst2", "central-nodp", False, "epochs", count=6, accuracy=0.86, macro_f1=0.85),
        ArmResult("sms", "fed-dp", True, "rounds", error="ConfigError: boom"),
    ]


def test_table_has_one_row_per_arm_with_its_figures():
    lines = format_table(_arms()).splitlines()
    assert len(lines) == 2 + 4
    fed = next(line for line in lines if "sst2" in line and "fed-dp" in line)
    assert "0.8000" in fed and "0.7900" in fed and "7.96" in fed and "3 rounds" in fed and "96.0" in fed
    assert "10.0" in fed  # minutes
    nodp = next(line for line in lines if "central-nodp" in line)
    assert "inf (no DP)" in nodp and "6 epochs" in nodp
    assert "FAILED: ConfigError: boom" in next(line for line in lines if line.startswith("sms"))


def test_dataset_summary_reports_rounds_late_drop_and_gap():
    text = dataset_summary("sst2", _arms())
    assert "r0 0.5000, r1 0.7000, r2 0.8100, r3 0.8000" in text
    assert "largest late drop: 1.00 pts (round 3; goal <= 1: ok)" in text
    assert "fed-dp minus central-nodp: -6.00 pts" in text
    assert dataset_summary("sms", _arms()) == "sms: no federated result"
    worse = _arms()
    worse[0].curve[-1] = (3, 0.79)
    assert "largest late drop: 2.00 pts (round 3; goal <= 1: ABOVE GOAL)" in dataset_summary("sst2", worse)


@pytest.mark.slow
def test_quick_run_end_to_end(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    # A 400-sentence sample (320 training, 3 sites) keeps the run short; the default is 2,400.
    command = ["--quick", "--model", str(tiny_model_dir), "--sample-size", "400", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "simulations.benchmarks.utility", *command],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    arms = {arm["arm"]: arm for arm in results["arms"]}
    assert sorted(arms) == ["central-dp", "central-nodp", "fed-dp"]
    assert all(arm["dataset"] == "sample" and arm["error"] is None for arm in arms.values())
    assert arms["fed-dp"]["count"] == 1 and [k for k, _ in arms["fed-dp"]["curve"]] == [0, 1]
    assert 0 < arms["fed-dp"]["epsilon"] <= 8.0 + 1e-6
    assert 0 < arms["central-dp"]["epsilon"] <= 8.0 + 1e-6
    assert arms["central-nodp"]["epsilon"] is None
    # The non-private arm trains for the passes the federated arm made (1 round x the recipe's local epochs).
    n_train = int(results["data"]["sample"]["n_train"])
    assert n_train == 320
    assert arms["central-nodp"]["count"] == round(arms["fed-dp"]["example_passes"] / n_train) >= 1
    assert (out / "accuracy_by_round.png").stat().st_size > 1000
    assert "largest late drop: n/a" in done.stdout and "fed-dp minus central-nodp" in done.stdout
