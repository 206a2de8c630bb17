"""Utility on SST-2: federated DP fine-tuning (fedavg, ffa, product) against non-private centralised LoRA.

Sites: ``--sites`` (8) carved from a seeded SST-2 training subset by Dirichlet(``--alpha``) label skew; every site
trains under DP-SGD with epsilon ``--epsilon`` (8) at delta 1e-5 over the whole run, under its own ledger.
Baseline: the same base model with a LoRA adapter trained WITHOUT privacy on the union of the sites' data, for the
same number of example passes (rounds x local epochs). All accuracies are on the SST-2 validation set (872
sentences, GLUE dev). Needs ../shared/data/sst2 (skips with a message when it is absent).

    python -m simulations.benchmarks.sst2_utility [--train-size 16000] [--rounds 3] [--strategies fedavg,ffa,product]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

DEFAULT_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sst2"


def main() -> None:
    """Run every arm and print one table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--train-size", type=int, default=16000, help="SST-2 training examples used (seeded subset)")
    parser.add_argument("--sites", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--strategies", default="fedavg,ffa,product")
    parser.add_argument("--baseline-lr", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-sst2"))
    args = parser.parse_args()

    train_file, eval_file = args.data_dir / "train.jsonl", args.data_dir / "test.jsonl"
    if not train_file.exists() or not eval_file.exists():
        print(f"SKIPPED: SST-2 not found under {args.data_dir}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    subset = args.out / "train_subset.jsonl"
    rows = train_file.read_text().splitlines()
    random.Random(0).shuffle(rows)
    subset.write_text("\n".join(rows[: args.train_size]) + "\n")
    (args.out / "labels.json").write_text((args.data_dir / "labels.json").read_text())

    results: list[dict[str, Any]] = []
    for strategy in [s.strip() for s in args.strategies.split(",") if s.strip()]:
        results.append(_federated(args, strategy, subset, eval_file))
        print(json.dumps(results[-1]), flush=True)
    results.append(_central(args, subset, eval_file))
    print(json.dumps(results[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))

    print(
        f"\nSST-2 validation accuracy; {args.train_size} training examples, {args.sites} sites Dirichlet({args.alpha}),"
        f" {args.rounds} rounds x {args.local_epochs} local epoch(s), base {args.model}"
    )
    print(f"{'arm':<34}{'accuracy':>10}{'macro F1':>10}{'max site eps':>14}{'minutes':>9}")
    for r in results:
        eps = "-" if r["max_site_epsilon"] is None else f"{r['max_site_epsilon']:.3f}"
        print(f"{r['arm']:<34}{r['accuracy']:>10.4f}{r['macro_f1']:>10.4f}{eps:>14}{r['seconds'] / 60:>9.1f}")


def _federated(args: argparse.Namespace, strategy: str, subset: Path, eval_file: Path) -> dict[str, Any]:
    from simulations.simulate import SimulationRequest, prepare_simulation, run_simulation

    out = args.out / f"federated-{strategy}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    settings = {
        "model": args.model,
        "strategy": strategy,
        "num-rounds": args.rounds,
        "local-epochs": args.local_epochs,
        "target-epsilon": args.epsilon,
        "federated-evaluation": False,
        "seed": 0,
    }
    request = SimulationRequest(
        data=subset, eval_data=eval_file, sites=args.sites, partition=f"dirichlet:{args.alpha}", seed=0
    )
    started = time.perf_counter()
    result = run_simulation(prepare_simulation(request, out, settings), request)
    seconds = time.perf_counter() - started
    evaluated = [r.server_eval for r in result.history if r.server_eval]
    spent = [e for record in result.history for site in record.sites if (e := site.metrics.get("epsilon-spent"))]
    return {
        "arm": f"federated DP {strategy} (eps {args.epsilon:g})",
        "accuracy": evaluated[-1]["accuracy"],
        "macro_f1": evaluated[-1]["macro_f1"],
        "accuracy_by_round": [m["accuracy"] for m in evaluated],
        "max_site_epsilon": max(spent) if spent else None,
        "completed_rounds": result.completed_rounds,
        "crashes": len(result.crashes),
        "seconds": seconds,
    }


def _central(args: argparse.Namespace, subset: Path, eval_file: Path) -> dict[str, Any]:
    from common.privacy.budget import BudgetSettings
    from common.training.config import PrivacySettings, TrainConfig
    from common.training.job import TrainJob, run_train_job

    out = args.out / "central-nodp"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    job = TrainJob(
        model=args.model,
        privacy=PrivacySettings(enabled=False),
        training=TrainConfig(epochs=args.rounds * args.local_epochs, batch_size=32, learning_rate=args.baseline_lr),
        seed=0,
    )
    started = time.perf_counter()
    result = run_train_job(
        job,
        train_path=subset,
        eval_path=eval_file,
        out_dir=out,
        budget=BudgetSettings(ledger=args.out / "central-ledger.jsonl", max_epsilon=None),
    )
    return {
        "arm": "central LoRA, no DP (same passes)",
        "accuracy": result.metrics.accuracy,
        "macro_f1": result.metrics.macro_f1,
        "max_site_epsilon": None,
        "seconds": time.perf_counter() - started,
    }


if __name__ == "__main__":
    main()
