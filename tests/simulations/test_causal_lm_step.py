"""The causal-LM step benchmark's helpers (presets, medians, ratios, the random data) and tiny smoke runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from common.training.causal_batches import IGNORE_INDEX
from simulations.benchmarks.causal_lm_parts import (
    MEMORY_GOAL,
    PRESETS,
    TIME_GOAL,
    RandomTokens,
    compare,
    lora_parameter_count,
    median,
    parameter_count,
    ratio,
    summarise_arm,
)


def test_the_tiny_preset_count_matches_the_instantiated_model():
    from transformers import LlamaForCausalLM

    from common.model.causal import apply_causal_lora
    from common.model.lora import LoraSettings

    preset = PRESETS["tiny"]
    model = LlamaForCausalLM(preset.llama_config(max_positions=64))
    assert sum(p.numel() for p in model.parameters()) == parameter_count(preset)
    adapted = apply_causal_lora(model, LoraSettings(r=8, target_modules=("q_proj", "v_proj")))
    assert sum(p.numel() for p in adapted.parameters() if p.requires_grad) == lora_parameter_count(preset)


def test_presets_are_the_advertised_sizes():
    assert 1e6 <= parameter_count(PRESETS["tiny"]) <= 10e6
    assert 90e6 <= parameter_count(PRESETS["cpu"]) <= 130e6
    assert 0.85e9 <= parameter_count(PRESETS["gpu"]) <= 1.2e9
    config = PRESETS["cpu"].llama_config(max_positions=256)  # a config only: no weights are built
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (768, 12, 32000)
    assert config.num_key_value_heads == config.num_attention_heads == 12


def test_median_and_ratio():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([1.0, 2.0, 3.0, 10.0]) == 2.5
    assert ratio(1.3, 1.0) == pytest.approx(1.3)
    with pytest.raises(ValueError, match="no measurements"):
        median([])
    with pytest.raises(ValueError, match="> 0"):
        ratio(1.0, 0.0)


def _run(times: list[float], tokens: int, peak_rss: float, before: float) -> dict[str, object]:
    return {
        "step_times_s": times,
        "step_tokens": [tokens] * len(times),
        "peak_rss_mb": peak_rss,
        "rss_before_training_mb": before,
        "peak_cuda_mb": None,
    }


def test_summary_pools_steps_and_takes_the_median_peak():
    runs = [_run([1.0, 3.0], 2048, 1000.0, 900.0), _run([2.0], 2048, 1200.0, 950.0), _run([9.0], 2048, 1100.0, 1000.0)]
    summary = summarise_arm(runs, "peak_rss_mb")
    assert summary["median_step_s"] == 2.5  # median of 1, 3, 2, 9
    assert summary["tokens_per_s"] == pytest.approx((2048 / 3 + 2048 / 2) / 2)  # median of the per-step rates
    assert summary["peak_memory_mb"] == 1100.0
    assert summary["rss_growth_mb"] == 100.0  # median of 100, 250, 100
    assert summary["measured_steps"] == 4


def test_comparison_ratios_and_goals():
    plain = {"median_step_s": 1.0, "tokens_per_s": 2000.0, "peak_memory_mb": 1000.0}
    inside = compare({"median_step_s": 1.25, "tokens_per_s": 1600.0, "peak_memory_mb": 1150.0}, plain)
    assert inside["time_ratio"] == pytest.approx(1.25)
    assert inside["tokens_per_s_ratio"] == pytest.approx(0.8)
    assert inside["memory_ratio"] == pytest.approx(1.15)
    assert inside["time_ok"] and inside["memory_ok"]
    assert (inside["time_goal"], inside["memory_goal"]) == (TIME_GOAL, MEMORY_GOAL) == (1.3, 1.2)
    outside = compare({"median_step_s": 1.5, "tokens_per_s": 1000.0, "peak_memory_mb": 1300.0}, plain)
    assert not outside["time_ok"] and not outside["memory_ok"]


def test_random_tokens_label_the_second_half_and_count_what_they_serve():
    data = RandomTokens(4, 10, vocab=50)
    assert len(data) == 4 and list(data.lengths) == [10] * 4
    inputs, labels = data.batch([2, 0], torch.device("cpu"))
    assert inputs["input_ids"].shape == (2, 10) and bool(inputs["attention_mask"].all())
    assert bool((labels[:, :5] == IGNORE_INDEX).all())
    assert torch.equal(labels[:, 5:], inputs["input_ids"][:, 5:])
    assert data.tokens_served == 20
    again, _ = RandomTokens(4, 10, vocab=50).batch([2, 0], torch.device("cpu"))
    assert torch.equal(again["input_ids"], inputs["input_ids"])  # seeded: both arms see the same tokens
    with pytest.raises(ValueError, match="empty"):
        data.batch([], torch.device("cpu"))


def test_fp16_is_not_offered_since_the_dp_arm_could_not_run_it():
    done = subprocess.run(
        [sys.executable, "-m", "simulations.benchmarks.causal_lm_step", "--precision", "fp16"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "invalid choice: 'fp16'" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "precision", "checkpointing"),
    [([], "fp32", False), (["--precision", "bf16", "--gradient-checkpointing"], "bf16", True)],
    ids=["fp32", "bf16-checkpointed"],
)
def test_tiny_run_end_to_end(tmp_path, options, precision, checkpointing):
    out = tmp_path / "causal.json"
    command = ["--size", "tiny", "--steps", "2", "--warmup", "1", "--repeats", "1", "--device", "cpu", *options]
    done = subprocess.run(
        [sys.executable, "-m", "simulations.benchmarks.causal_lm_step", *command, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "time ratio (dp/plain)" in done.stdout and "memory ratio (dp/plain)" in done.stdout
    on_off = "on" if checkpointing else "off"
    assert f"precision {precision}, gradient checkpointing {on_off}" in done.stdout.splitlines()[0]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["dtype"] == "float32"
    assert (report["precision"], report["gradient_checkpointing"]) == (precision, checkpointing)
    assert report["parameters"] == parameter_count(PRESETS["tiny"])
    for arm in ("dp", "plain"):
        (run,) = report["runs"][arm]
        assert run["step_tokens"] == [8 * 256]  # one measured step of the whole 8 x 256 batch, in both arms
        assert run["examples_seen"] == 2 * 8
        assert (run["precision"], run["gradient_checkpointing"]) == (precision, checkpointing)  # both arms alike
        assert report["arms"][arm]["median_step_s"] > 0 and report["arms"][arm]["peak_memory_mb"] > 0
    assert report["comparison"]["time_ratio"] > 0 and report["comparison"]["memory_ratio"] > 0
