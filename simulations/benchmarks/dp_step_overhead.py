"""Cost of privacy per step: a DP-LoRA step (Opacus hooks, clipping, noise) against a non-private LoRA step.

Both arms run fedtune's own trainer on the same model (MiniLM by default, LoRA r=8 on query/value), batch 32 of
sequences of exactly 64 tokens. Each arm runs in its own process (so peak RSS is that arm's alone), the arms
alternate (dp, plain, plain, dp, ...) so that machine noise hits both, the first steps of each process are dropped as
warm-up, and the per-step times are summarised by medians. Prints both ratios (goal: time <= 1.15, memory <= 1.15).

    python -m simulations.benchmarks.dp_step_overhead [--model DIR|ID] [--repeats 3] [--steps 15] [--device auto]
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

BATCH = 32
SEQUENCE = 64


def _run_arm(arm: str, model_name: str, steps: int, warmup: int, device_choice: str) -> dict[str, Any]:
    """Train ``steps`` steps of one arm in this process and report per-step times and memory."""
    import torch

    from common.data.dataset import LabeledTexts
    from common.data.sample import sample_dataset
    from common.model.loading import load_base_classifier, load_tokenizer, resolve_base_model
    from common.model.lora import LoraSettings, apply_lora
    from common.training.batches import StepPlan, TokenizedTexts
    from common.training.config import TrainConfig
    from common.training.device import resolve_device
    from common.training.trainer import DpSgdParams, train_adapter

    device = resolve_device(device_choice)
    torch.manual_seed(0)
    ref = resolve_base_model(model_name)
    tokenizer = load_tokenizer(ref)
    model = apply_lora(load_base_classifier(ref, ("negative", "positive")), LoraSettings(r=8, target_modules=None))
    sentences = sample_dataset(8 * BATCH).texts
    # Every example is long enough to fill all SEQUENCE tokens after truncation: identical work in both arms.
    texts = tuple(" ".join(sentences[i : i + 8]) for i in range(0, 8 * BATCH, 8))
    data = LabeledTexts(texts=texts, labels=tuple(i % 2 for i in range(BATCH)), label_names=("n", "p"), source="bench")
    tokenized = TokenizedTexts(data, tokenizer, max_length=SEQUENCE)
    assert all(len(ids) == SEQUENCE for ids in tokenized._features["input_ids"])
    # q = 1: the Poisson batch is exactly the BATCH examples, so both arms process BATCH x SEQUENCE tokens a step.
    plan = StepPlan(num_examples=BATCH, batch_size=BATCH, sample_rate=1.0, steps=steps)
    config = TrainConfig(batch_size=BATCH, physical_batch_size=BATCH, learning_rate=1e-3)
    dp = DpSgdParams(noise_multiplier=1.0, max_grad_norm=1.0) if arm == "dp" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    baseline_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stamps = [time.perf_counter()]

    def on_step(done: int, planned: int, loss: float | None) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    train_adapter(model, tokenized, config=config, plan=plan, dp=dp, device=device, seed=0, progress=on_step)
    times = [b - a for a, b in itertools.pairwise(stamps)][warmup:]
    return {
        "arm": arm,
        "device": str(device),
        "median_step_s": statistics.median(times),
        "step_times_s": times,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_training_mb": baseline_rss_mb,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


def _spawn(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "simulations.benchmarks.dp_step_overhead",
        "--arm",
        arm,
        "--model",
        args.model,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--device",
        args.device,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"arm {arm} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run the comparison (or, with --arm, one arm in this process)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--repeats", type=int, default=3, help="processes per arm")
    parser.add_argument("--steps", type=int, default=15, help="steps per process (>= warmup + 10)")
    parser.add_argument("--warmup", type=int, default=3, help="steps dropped per process")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--arm", choices=["dp", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(_run_arm(args.arm, args.model, args.steps, args.warmup, args.device)))
        return
    if args.steps - args.warmup < 10:
        parser.error("need at least 10 measured steps per process (steps - warmup >= 10)")

    results: dict[str, list[dict[str, Any]]] = {"dp": [], "plain": []}
    for repeat in range(args.repeats):
        order = ("dp", "plain") if repeat % 2 == 0 else ("plain", "dp")
        for arm in order:
            outcome = _spawn(arm, args)
            results[arm].append(outcome)
            print(
                f"  repeat {repeat + 1} {arm:>5}: median step {outcome['median_step_s'] * 1000:8.1f} ms, "
                f"peak RSS {outcome['peak_rss_mb']:7.0f} MB",
                flush=True,
            )

    def summary(arm: str) -> tuple[float, float, float | None]:
        runs = results[arm]
        all_steps = [t for run in runs for t in run["step_times_s"]]
        cuda = [run["peak_cuda_mb"] for run in runs if run["peak_cuda_mb"] is not None]
        return (
            statistics.median(all_steps),
            statistics.median(r["peak_rss_mb"] for r in runs),
            (statistics.median(cuda) if cuda else None),
        )

    dp_time, dp_rss, dp_cuda = summary("dp")
    plain_time, plain_rss, plain_cuda = summary("plain")
    measured = sum(len(r["step_times_s"]) for r in results["dp"])
    print(
        f"model {args.model}, batch {BATCH}, sequence {SEQUENCE}, device {results['dp'][0]['device']}, "
        f"{args.repeats} processes x {args.steps - args.warmup} measured steps per arm ({measured} per arm)"
    )
    print(f"median step time: dp {dp_time * 1000:.1f} ms, plain {plain_time * 1000:.1f} ms")
    print(f"peak RSS:         dp {dp_rss:.0f} MB, plain {plain_rss:.0f} MB")
    if dp_cuda is not None and plain_cuda is not None:
        print(f"peak CUDA memory: dp {dp_cuda:.0f} MB, plain {plain_cuda:.0f} MB  (ratio {dp_cuda / plain_cuda:.3f})")
    print(f"time ratio (dp/plain):   {dp_time / plain_time:.3f}   goal <= 1.15")
    print(f"memory ratio (dp/plain): {dp_rss / plain_rss:.3f}   goal <= 1.15")


if __name__ == "__main__":
    main()
