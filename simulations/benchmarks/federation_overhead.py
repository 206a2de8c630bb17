"""Framework overhead of a simulated federation: wall time per round against the pure local training it contains.

Runs ``fedtune simulate``'s machinery (Flower simulation engine, Ray, ledgers, validation, aggregation,
checkpoints) on the built-in sample data with evaluation off, timing every round. Then, in this process, it times
pure local DP training (fedtune's trainer alone, no Flower, no ledger) of exactly the same steps for every
site-round, alternating the order of sites between repeats. Round 1 carries the start-up (Ray, workers, model
loading, noise calibration) and is reported separately; the overhead ratio is over the remaining rounds.
Goal: overhead ratio <= 1.2.

    python -m simulations.benchmarks.federation_overhead [--model minilm] [--sites 4] [--rounds 4]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from common.federation.rounds import RoundRecord


def main() -> None:
    """Run one simulation, then the same training without the framework, and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the pure-training arm (median taken)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from simulations.simulate import SimulationRequest, prepare_simulation, run_simulation

    out = args.out or Path(tempfile.mkdtemp(prefix="fedtune-overhead-")) / "run"
    request = SimulationRequest(sites=args.sites, seed=0)
    settings = {"model": args.model, "num-rounds": args.rounds, "federated-evaluation": False, "eval-data": ""}
    prepared = prepare_simulation(request, out, settings)
    ends: list[float] = []
    started = time.perf_counter()
    result = run_simulation(prepared, request, on_round=lambda record: ends.append(time.perf_counter()))
    total = time.perf_counter() - started
    if not result.ok or result.completed_rounds != args.rounds:
        raise SystemExit(f"the simulation did not complete cleanly: {result.stop_reason or result.crashes}")

    pure = _pure_training(prepared, result.history, args.repeats)
    rounds_after_first = [b - a for a, b in itertools.pairwise(ends)]
    reported = [
        sum(site.metrics.get("train-seconds", 0.0) for site in record.sites)
        for record in result.history
        if record.round >= 2
    ]
    per_round_pure = statistics.median(pure)
    wall_steady = sum(rounds_after_first)
    pure_steady = per_round_pure * len(rounds_after_first)
    startup = ends[0] - started - per_round_pure
    print(
        f"model {prepared.config.model}, {args.sites} sites, {args.rounds} rounds, strategy {prepared.config.strategy}"
    )
    print(
        f"wall time of the whole simulation: {total:.1f} s (including {total - (ends[-1] - started):.1f} s of shutdown)"
    )
    print(f"start-up (round 1 wall time minus its training): {startup:.1f} s")
    print("wall time per round after the first: " + ", ".join(f"{t:.2f}" for t in rounds_after_first) + " s")
    print(f"pure local training per round (all sites, median of {args.repeats}): {per_round_pure:.2f} s")
    print("training time the sites measured inside those rounds: " + ", ".join(f"{t:.2f}" for t in reported) + " s")
    print(
        f"overhead ratio vs the sites' own training time (rounds 2..{args.rounds}): "
        f"{wall_steady / sum(reported):.3f}   goal <= 1.2"
    )
    print(f"overhead ratio vs pure training timed here (rounds 2..{args.rounds}): {wall_steady / pure_steady:.3f}")


def _pure_training(prepared: Any, history: tuple[RoundRecord, ...], repeats: int) -> list[float]:
    """Seconds to train one round of every site with fedtune's trainer alone (same data, plan, sigma), per repeat."""
    from client.runtime import site_data, site_model
    from common.model.adapter import load_adapter_state
    from common.training.batches import plan_steps
    from common.training.device import resolve_device
    from common.training.recipe import RecipeInputs, choose_recipe
    from common.training.trainer import DpSgdParams, train_adapter
    from server.checkpoint import load_checkpoint

    config = prepared.config
    model = site_model(config)
    sigma = {site.site_name: site.metrics["noise-multiplier"] for site in history[-1].sites}
    start = load_checkpoint(Path(config.out_dir) / "checkpoints")
    assert start is not None
    per_repeat = []
    sites = list(prepared.sites.values())
    for repeat in range(repeats):
        order = sites if repeat % 2 == 0 else list(reversed(sites))
        elapsed = 0.0
        for site in order:
            data = site_data(site, config, model.tokenizer)
            load_adapter_state(model.model, start.adapter)
            inputs = RecipeInputs(
                num_examples=len(data.train),
                rounds=config.num_rounds,
                target_epsilon=config.target_epsilon,
                delta=site.delta,
                trainable_parameters=0,
                federated=True,
            )
            recipe, training = choose_recipe(inputs, config.training, max_grad_norm=config.max_grad_norm)
            assert training.batch_size is not None and training.epochs is not None and recipe.max_grad_norm
            plan = plan_steps(
                num_examples=len(data.train),
                batch_size=training.batch_size,
                epochs=training.epochs,
                source=str(site.data_path),
            )
            began = time.perf_counter()
            train_adapter(
                model.model,
                data.train,
                config=training,
                plan=plan,
                dp=DpSgdParams(noise_multiplier=sigma[site.site_name], max_grad_norm=recipe.max_grad_norm),
                device=resolve_device(site.device),
                seed=repeat,
            )
            elapsed += time.perf_counter() - began
        per_repeat.append(elapsed)
    print("pure training per round, each repeat: " + json.dumps([round(t, 2) for t in per_repeat]))
    return per_repeat


if __name__ == "__main__":
    main()
