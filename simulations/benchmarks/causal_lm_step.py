"""Cost of privacy per step on a causal LM: a DP-LoRA step (Opacus hooks, clipping, noise) against a LoRA step.

Both arms run fedtune's own trainer (``train_adapter`` with ``task=CausalLmTask()``) on the same Llama-style model,
built from a config with random weights (timing does not depend on the weights' values): about 100M parameters for
``--size cpu``, about 1B for ``--size gpu``, a few M for ``--size tiny`` (tests). LoRA r=8 on ``q_proj``/``v_proj``.
The data are random token ids: every example has exactly ``--seq`` tokens (no padding), labels ``-100`` on the first
half (the "prompt") so the loss is on the second half, as in generative fine-tuning.

Like with like: the data hold exactly ``--batch`` examples; the non-DP arm takes all of them a step (shuffled
fixed-size batches), the DP arm Poisson-samples at q = 1 (every example every step), through the same code path as a
real job (Opacus, sigma = 1, C = 1): the step-time ratio is the cost of privacy alone. Tokens/s counts the tokens
actually fed; the physical batch is the whole logical batch (peak memory: one pass of ``batch x seq`` tokens).

Each arm runs in its own process (so its peak memory is its own: peak RSS on CPU, ``torch.cuda.max_memory_allocated``
on CUDA), the arms alternate (dp, plain, plain, dp, ...) so machine noise hits both, the first ``--warmup`` steps of
each process (the first includes Opacus's set-up) are dropped, and the per-step times are summarised by medians.
Prints both ratios DP/non-DP (goal: time <= 1.3, memory <= 1.2). Weights are float32 unless ``--dtype bf16`` (then
the base model is bfloat16; peft keeps the LoRA matrices in float32). Both arms run with the same ``--precision``
(the trainer's autocast: fp32 or bf16; fp16 is left out because DP-SGD refuses it, so the DP arm could not run) and
the same ``--gradient-checkpointing`` (recomputed activations), so a ratio compares like with like.
Usage: ``python -m simulations.benchmarks.causal_lm_step [--size cpu|gpu|tiny] [--batch 8] [--seq 256]
[--precision fp32|bf16] [--gradient-checkpointing] [--json F]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from simulations.benchmarks.causal_lm_parts import (
    LORA_RANK,
    LORA_TARGETS,
    MEMORY_GOAL,
    PRESETS,
    TIME_GOAL,
    RandomTokens,
    compare,
    median,
    parameter_count,
    summarise_arm,
)


def _run_arm(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    """Train ``args.steps`` steps of one arm in this process and report per-step times, tokens and memory."""
    import torch
    from transformers import LlamaForCausalLM

    from common.model.causal import apply_causal_lora
    from common.model.lora import LoraSettings
    from common.training.batches import StepPlan
    from common.training.config import TrainConfig
    from common.training.device import resolve_device
    from common.training.task import CausalLmTask
    from common.training.trainer import DpSgdParams, train_adapter

    device = resolve_device(args.device)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    preset = PRESETS[args.size]
    torch.manual_seed(0)
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype directly: no float32 copy inflates the peak
    try:
        with device:
            base = LlamaForCausalLM(preset.llama_config(max_positions=args.seq))
    finally:
        torch.set_default_dtype(previous_dtype)
    total_params = sum(p.numel() for p in base.parameters())
    model = apply_causal_lora(base, LoraSettings(r=LORA_RANK, target_modules=LORA_TARGETS, ffa=False))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    data = RandomTokens(args.batch, args.seq, preset.vocab)
    # q = 1 over exactly `batch` examples: the Poisson batch is all of them, as is the shuffled one (module docstring).
    plan = StepPlan(num_examples=args.batch, batch_size=args.batch, sample_rate=1.0, steps=args.steps)
    config = TrainConfig(epochs=1, batch_size=args.batch, physical_batch_size=args.batch, learning_rate=1e-4)
    dp = DpSgdParams(noise_multiplier=1.0, max_grad_norm=1.0) if arm == "dp" else None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stamps = [time.perf_counter()]
    served = [0]

    def on_step(done: int, planned: int, loss: float | None) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        served.append(data.tokens_served)

    outcome = train_adapter(
        model,
        data,
        config=config,
        plan=plan,
        dp=dp,
        device=device,
        seed=0,
        progress=on_step,
        task=CausalLmTask(),
        precision=args.precision,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    times = [b - a for a, b in itertools.pairwise(stamps)][args.warmup :]
    tokens = [b - a for a, b in itertools.pairwise(served)][args.warmup :]
    return {
        "arm": arm,
        "device": str(device) if device.type != "cuda" else f"cuda ({torch.cuda.get_device_name(device)})",
        "dtype": str(dtype).removeprefix("torch."),
        "precision": args.precision,
        "gradient_checkpointing": args.gradient_checkpointing,
        "parameters": total_params,
        "trainable_parameters": trainable,
        "median_step_s": median(times),
        "step_times_s": times,
        "step_tokens": tokens,
        "examples_seen": outcome.examples_seen,
        "final_loss": outcome.final_loss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_training_mb": rss_before_mb,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
    }


def _spawn(arm: str, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, "-m", "simulations.benchmarks.causal_lm_step", "--arm", arm]
    for flag in ("size", "batch", "seq", "steps", "warmup", "device", "dtype", "precision"):
        command += [f"--{flag}", str(getattr(args, flag))]
    if args.gradient_checkpointing:
        command.append("--gradient-checkpointing")
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"arm {arm} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _verdict(ok: bool) -> str:
    return "ok" if ok else "ABOVE GOAL"


def main() -> None:
    """Run the comparison (or, with --arm, one arm in this process)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="cpu", choices=sorted(PRESETS), help="model preset (default cpu)")
    parser.add_argument("--batch", type=int, default=8, help="examples per step (logical = physical batch)")
    parser.add_argument("--seq", type=int, default=256, help="tokens per example")
    parser.add_argument("--steps", type=int, default=8, help="steps per process")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped per process (>= 1: the first sets up)")
    parser.add_argument("--repeats", type=int, default=3, help="processes per arm")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="base model weights")
    parser.add_argument(
        "--precision", default="fp32", choices=["fp32", "bf16"], help="autocast of both arms (fp16: DP refuses it)"
    )
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="both arms recompute activations in the backward pass"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--arm", choices=["dp", "plain"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch < 1 or args.seq < 2 or args.repeats < 1:
        parser.error("need --batch >= 1, --seq >= 2 and --repeats >= 1")
    if args.warmup < 1 or args.steps <= args.warmup:
        parser.error("need --warmup >= 1 and --steps > --warmup (at least one measured step per process)")
    if args.arm:
        print(json.dumps(_run_arm(args.arm, args)))
        return

    preset = PRESETS[args.size]
    checkpointing = "on" if args.gradient_checkpointing else "off"
    print(
        f"Llama preset {args.size}: {parameter_count(preset) / 1e6:.1f}M parameters ({asdict(preset)}), "
        f"LoRA r={LORA_RANK} on {','.join(LORA_TARGETS)}; batch {args.batch} x {args.seq} tokens; weights "
        f"{args.dtype}, precision {args.precision}, gradient checkpointing {checkpointing}",
        flush=True,
    )
    results: dict[str, list[dict[str, Any]]] = {"dp": [], "plain": []}
    for repeat in range(args.repeats):
        order = ("dp", "plain") if repeat % 2 == 0 else ("plain", "dp")
        for arm in order:
            outcome = _spawn(arm, args)
            results[arm].append(outcome)
            cuda = f", peak CUDA {outcome['peak_cuda_mb']:7.0f} MB" if outcome["peak_cuda_mb"] is not None else ""
            print(
                f"  repeat {repeat + 1} {arm:>5}: median step {outcome['median_step_s'] * 1000:9.1f} ms, "
                f"peak RSS {outcome['peak_rss_mb']:7.0f} MB{cuda}",
                flush=True,
            )

    first = results["dp"][0]
    on_cuda = first["peak_cuda_mb"] is not None
    memory_key = "peak_cuda_mb" if on_cuda else "peak_rss_mb"
    memory_name = "peak CUDA memory (max_memory_allocated)" if on_cuda else "peak RSS of the arm's process"
    dp_summary = summarise_arm(results["dp"], memory_key)
    plain_summary = summarise_arm(results["plain"], memory_key)
    comparison = compare(dp_summary, plain_summary)
    print(
        f"device {first['device']}, dtype {first['dtype']}, {first['parameters'] / 1e6:.1f}M parameters "
        f"({first['trainable_parameters']:,} trainable LoRA), batch {args.batch} x {args.seq} tokens, "
        f"{args.repeats} processes x {args.steps - args.warmup} measured steps per arm "
        f"({int(dp_summary['measured_steps'])} per arm)"
    )
    for name, arm_summary in (("dp", dp_summary), ("plain", plain_summary)):
        growth = "" if on_cuda else f" (training added {arm_summary['rss_growth_mb']:.0f} MB)"
        print(
            f"  {name:>5}: median step {arm_summary['median_step_s'] * 1000:9.1f} ms, "
            f"{arm_summary['tokens_per_s']:9.0f} tokens/s, {memory_name} {arm_summary['peak_memory_mb']:7.0f} MB"
            f"{growth}"
        )
    print(
        f"time ratio (dp/plain):   {comparison['time_ratio']:.3f}   goal <= {TIME_GOAL}: "
        f"{_verdict(comparison['time_ok'])}  (tokens/s ratio {comparison['tokens_per_s_ratio']:.3f})"
    )
    print(
        f"memory ratio (dp/plain): {comparison['memory_ratio']:.3f}   goal <= {MEMORY_GOAL}: "
        f"{_verdict(comparison['memory_ok'])}"
    )
    if args.json is not None:
        report = {
            "size": args.size,
            "preset": asdict(preset),
            "device": first["device"],
            "dtype": first["dtype"],
            "precision": args.precision,
            "gradient_checkpointing": args.gradient_checkpointing,
            "parameters": first["parameters"],
            "trainable_parameters": first["trainable_parameters"],
            "batch": args.batch,
            "seq": args.seq,
            "steps": args.steps,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "memory": memory_name,
            "arms": {"dp": dp_summary, "plain": plain_summary},
            "comparison": comparison,
            "runs": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
