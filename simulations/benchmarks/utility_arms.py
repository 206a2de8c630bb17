"""The datasets and arms of :mod:`simulations.benchmarks.utility`: seeded subsets on disk, then one run per arm.

Every arm of a dataset reads the same two files written here (``OUT/<dataset>/data/{train,test}.jsonl``): the
federated arm carves ``train`` into its sites and evaluates the global adapter on ``test`` server-side; the central
arms train on ``train`` (the union of the sites' data) and evaluate on ``test``. Heavy imports (torch, Flower) happen
inside the arm functions, so the benchmark's pure parts import fast.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.data.dataset import LabeledTexts
from common.data.sample import DEFAULT_SAMPLE_SIZE

#: Where the shared datasets live: ../shared/data beside the repository.
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"

Log = Callable[[str], None]


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark dataset: where its files are (None: the built-in sample), its sites and its training size."""

    name: str
    title: str
    directory: str | None
    sites: int
    partition: str
    train_size: int | None = None  # a seeded subset of this many training examples; None: all of them


DATASETS: dict[str, DatasetSpec] = {
    "sst2": DatasetSpec("sst2", "SST-2", "sst2", sites=8, partition="dirichlet:0.5", train_size=16_000),
    "sms": DatasetSpec("sms", "SMS Spam", "sms_spam", sites=4, partition="iid"),
    "sample": DatasetSpec("sample", "built-in sample", None, sites=3, partition="iid"),
}


@dataclass(frozen=True)
class DataFiles:
    """The seeded subsets every arm of one dataset uses, and how they were drawn."""

    train: Path
    test: Path
    n_train: int
    n_test: int
    source_train: int
    source_test: int


@dataclass
class ArmResult:
    """One arm on one dataset: final metrics, spend, length, time, and its accuracy curve.

    ``accuracy``/``macro_f1`` are the LAST round's (epoch's) model on the test subset; ``kept_accuracy`` is what
    the run's default selection kept (best on the same data, so optimistic). ``curve`` holds (round or epoch,
    accuracy); a federated curve starts at round 0 (the initial adapter). ``example_passes``: expected examples
    trained on, summed over sites, rounds and epochs.
    """

    dataset: str
    arm: str
    private: bool
    unit: str  # "rounds" or "epochs"
    count: int = 0
    accuracy: float | None = None
    macro_f1: float | None = None
    kept_accuracy: float | None = None
    epsilon: float | None = None
    site_epsilons: dict[str, float] = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)
    example_passes: float = 0.0
    seconds: float = 0.0
    note: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (results.json)."""
        return {**asdict(self), "curve": [list(point) for point in self.curve]}


def _write_jsonl(path: Path, dataset: LabeledTexts) -> None:
    names = dataset.label_names
    lines = (json.dumps({"text": t, "label": names[y]}) for t, y in zip(dataset.texts, dataset.labels, strict=True))
    path.write_text("\n".join(lines) + "\n")


def _seeded_subset(dataset: LabeledTexts, size: int | None, seed: int) -> LabeledTexts:
    """``size`` examples drawn without replacement by ``random.Random(seed)`` (file order kept); all if None."""
    if size is None or size >= len(dataset):
        return dataset
    return dataset.subset(sorted(random.Random(seed).sample(range(len(dataset)), size)))


def prepare_data(
    spec: DatasetSpec,
    *,
    root: Path,
    out: Path,
    seed: int,
    max_eval: int,
    train_size: int | None,
    sample_size: int = DEFAULT_SAMPLE_SIZE,
) -> DataFiles | None:
    """Write the dataset's seeded training and test subsets under ``out/data``; None if its files are absent.

    The built-in sample (``sample_size`` sentences) is split exactly as ``fedtune simulate`` without ``--data``
    splits it (same fraction and seed), so its arms see what a plain simulate run would.
    """
    from common.data.readers import read_labeled_file

    if spec.directory is None:
        from common.data.sample import sample_dataset
        from common.data.split import train_eval_split
        from common.training.config import DEFAULT_EVAL_FRACTION

        pool = sample_dataset(sample_size)
        train, test = train_eval_split(pool, eval_fraction=DEFAULT_EVAL_FRACTION, seed=seed)
    else:
        directory = root / spec.directory
        if not (directory / "train.jsonl").is_file() or not (directory / "test.jsonl").is_file():
            return None
        train = read_labeled_file(directory / "train.jsonl")  # label names from its labels.json
        test = read_labeled_file(directory / "test.jsonl", label_names=train.label_names)
    train_subset = _seeded_subset(train, train_size, seed)
    test_subset = _seeded_subset(test, max_eval, seed + 1)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "labels.json").write_text(json.dumps(list(train.label_names)) + "\n")
    _write_jsonl(data / "train.jsonl", train_subset)
    _write_jsonl(data / "test.jsonl", test_subset)
    return DataFiles(
        train=data / "train.jsonl",
        test=data / "test.jsonl",
        n_train=len(train_subset),
        n_test=len(test_subset),
        source_train=len(train),
        source_test=len(test),
    )


def run_federated(
    spec: DatasetSpec, files: DataFiles, out: Path, *, model: str, rounds: int, epsilon: float, seed: int, log: Log
) -> ArmResult:
    """``fedtune simulate`` with its defaults (recipe, strategy, server optimiser), server-side eval on ``test``.

    Only the model, rounds, target epsilon and seed are set, and federated evaluation is off: with it on, every site
    would hold out a fifth of its data from training (the central arms train on all of it) and evaluate each round.
    """
    from common.federation import protocol as p
    from common.federation.rounds import RoundRecord, Status
    from simulations.simulate import SimulationRequest, prepare_simulation, run_simulation

    result = ArmResult(dataset=spec.name, arm="fed-dp", private=True, unit="rounds")
    started = time.perf_counter()

    def on_round(record: RoundRecord) -> None:
        accuracy = (record.server_eval or {}).get("accuracy")
        if accuracy is not None:
            minutes = (time.perf_counter() - started) / 60
            log(f"  {spec.name} fed-dp round {record.round}/{rounds}: accuracy {accuracy:.4f} ({minutes:.1f} min)")

    settings = {
        "model": model,
        "num-rounds": rounds,
        "target-epsilon": epsilon,
        "federated-evaluation": False,
        "seed": seed,
    }
    request = SimulationRequest(
        data=files.train, eval_data=files.test, sites=spec.sites, partition=spec.partition, seed=seed
    )
    prepared = prepare_simulation(request, out, settings)
    config = prepared.config
    log(f"  {spec.name} fed-dp: strategy {config.strategy}, server optimiser {config.server_optimizer.name}")
    for line in prepared.recipe_lines:
        log(f"    {line}")
    federation = run_simulation(prepared, request, on_round=on_round)
    result.seconds = time.perf_counter() - started
    result.count = federation.completed_rounds
    history = sorted(federation.history, key=lambda record: record.round)
    evaluated = [
        (r.round, r.server_eval) for r in history if r.server_eval and r.server_eval.get("accuracy") is not None
    ]
    result.curve = [(k, float(metrics["accuracy"] or 0.0)) for k, metrics in evaluated]
    if evaluated:
        result.accuracy, result.macro_f1 = evaluated[-1][1].get("accuracy"), evaluated[-1][1].get("macro_f1")
    if federation.selected is not None and federation.selected.metric == "accuracy":
        result.kept_accuracy = federation.selected.value
    local_epochs: set[int] = set()
    for record in history:
        for site in record.with_status(Status.TRAINED):
            metrics = site.metrics
            if p.EPSILON_SPENT in metrics:
                result.site_epsilons[site.site_name] = metrics[p.EPSILON_SPENT]  # rounds in order: the last wins
            if {p.STEPS, p.SAMPLE_RATE, p.NUM_EXAMPLES} <= metrics.keys():
                expected = metrics[p.STEPS] * metrics[p.SAMPLE_RATE]  # passes this round: in [E, E + q), q <= 0.5
                result.example_passes += expected * metrics[p.NUM_EXAMPLES]
                local_epochs.add(int(expected + 1e-9))
    result.epsilon = max(result.site_epsilons.values()) if result.site_epsilons else None
    notes = [f"local epochs/round {','.join(map(str, sorted(local_epochs)))}" if local_epochs else ""]
    if federation.crashes:
        notes.append(f"{len(federation.crashes)} site crash(es)")
    if federation.stop_reason:
        notes.append(f"stopped: {federation.stop_reason}")
    result.note = "; ".join(n for n in notes if n)
    if result.accuracy is None:
        result.error = "no server-side evaluation was recorded"
    return result


def run_central(
    spec: DatasetSpec,
    files: DataFiles,
    out: Path,
    *,
    model: str,
    epsilon: float | None,
    epochs: int | None,
    seed: int,
    ledger: Path,
    log: Log,
) -> ArmResult:
    """``fedtune train`` on the whole training subset: DP at ``epsilon`` (None: non-private), recipe defaults.

    ``epochs`` None leaves the passes to the recipe; every other training setting is always the recipe's.
    """
    from common.privacy.budget import BudgetSettings
    from common.training.config import PrivacySettings, TrainConfig, TrainJob
    from common.training.job import run_train_job

    private = epsilon is not None
    arm = "central-dp" if private else "central-nodp"
    result = ArmResult(dataset=spec.name, arm=arm, private=private, unit="epochs")
    job = TrainJob(
        model=model,
        privacy=PrivacySettings(target_epsilon=epsilon) if private else PrivacySettings(enabled=False),
        training=TrainConfig(epochs=epochs),
        seed=seed,
    )
    budget = BudgetSettings(ledger=ledger, max_epsilon=epsilon)  # a non-private job is recorded as spending inf
    reported: set[int] = set()

    def progress(done: int, planned: int, loss: float | None) -> None:
        quarter = 4 * done // max(1, planned)
        if quarter not in reported:  # a line at each quarter of the steps, so a long arm shows life
            reported.add(quarter)
            log(f"  {spec.name} {arm}: step {done}/{planned} ({(time.perf_counter() - started) / 60:.1f} min)")

    started = time.perf_counter()
    job_result = run_train_job(
        job,
        train_path=files.train,
        eval_path=files.test,
        out_dir=out,
        budget=budget,
        progress=progress,
        on_plan=lambda _data, plan, _projection: log(f"    {arm}: {plan.recipe.describe(plan.recipe_inputs)}"),
        on_warning=lambda line: log(f"    {arm} warning: {line}"),
    )
    result.seconds = time.perf_counter() - started
    history = job_result.outcome.history
    epoch = job_result.plan.epoch
    result.count = len(history)
    scores = [metrics.to_dict() for metrics in history]
    result.curve = [(k + 1, float(score["accuracy"])) for k, score in enumerate(scores)]
    if scores:
        result.accuracy, result.macro_f1 = float(scores[-1]["accuracy"]), float(scores[-1]["macro_f1"])
    result.kept_accuracy = job_result.metrics.accuracy
    result.epsilon = job_result.epsilon if private else None
    result.example_passes = len(history) * epoch.steps * epoch.sample_rate * epoch.num_examples
    result.note = f"batch {epoch.batch_size}, lr {job_result.plan.training.learning_rate:g}"
    return result
