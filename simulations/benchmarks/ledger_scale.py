"""Ledger size and check-before-spend time with per-record budgets: 100,000 records, 50 recorded events.

Two histories of 50 DP-SGD events, each ending on a dataset of 100,000 records:

* ``steady``: every event on the same 100,000 records (50 rounds of one federation on one file);
* ``growing``: a dataset that grows by 2,000 records before every event (2,000 at the first, 100,000 at the 50th),
  as a site whose data arrives monthly; every event's record set differs, so exposure classes multiply.

For each, it prints the ledger's size on disk (ledger + head anchor) and the median time of: computing the ids of
the 100,000 texts (the site does it once per round), ``status`` (read and verify the whole ledger, partition the
records into exposure classes, recompute the most exposed record's epsilon), and ``reserve`` (the same check, then
the durable append). Goals: under 10 MB and under 1 s.

    python -m simulations.benchmarks.ledger_scale [--records 100000] [--events 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def _median_seconds(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats + 1):  # the first run warms caches and is dropped
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def _scenario(name: str, texts: list[str], events: int, repeats: int, directory: Path) -> None:
    from common.privacy.events import DpSgdEvent
    from common.privacy.ledger import PrivacyLedger
    from common.privacy.storage import head_path

    path = directory / f"{name}.jsonl"
    ledger = PrivacyLedger(path)
    event = DpSgdEvent(noise_multiplier=8.0, sample_rate=0.001, steps=100, max_grad_norm=1.0)
    step = len(texts) // events
    for k in range(events):
        size = len(texts) if name == "steady" else step * (k + 1)
        dataset = ledger.dataset(texts[:size], dataset_id=f"{name}.jsonl")
        ledger.commit(ledger.reserve(dataset=dataset, event=event, delta=1e-6, limit=None, run_id=f"round-{k}"))
    full = ledger.dataset(texts, dataset_id=f"{name}.jsonl")
    size_mb = (path.stat().st_size + head_path(path).stat().st_size) / 1e6
    ids_s = _median_seconds(lambda: ledger.dataset(texts, dataset_id="ids"), repeats)
    status_s = _median_seconds(lambda: ledger.status(full, delta=1e-6, limit=1e9), repeats)
    status = ledger.status(full, delta=1e-6, limit=1e9)
    copies = [directory / f"{name}-copy-{i}.jsonl" for i in range(repeats + 1)]
    for copy in copies:  # reserve on identical copies, so every timed reserve checks the same 50 events
        copy.write_bytes(path.read_bytes())
        head_path(copy).write_bytes(head_path(path).read_bytes())
        (directory / f"{copy.name}.record-key").write_bytes((directory / f"{path.name}.record-key").read_bytes())
    pending = iter(copies)

    def reserve() -> None:
        copy = PrivacyLedger(next(pending))
        copy.reserve(dataset=full, event=event, delta=1e-6, limit=1e9, run_id="timed")

    reserve_s = _median_seconds(reserve, repeats)
    print(
        f"{name:8s} {len(texts):,} records, {events} events, {status.classes} exposure classes: "
        f"ledger {size_mb:.2f} MB; ids {ids_s * 1000:.0f} ms; status {status_s * 1000:.0f} ms; "
        f"reserve {reserve_s * 1000:.0f} ms; most exposed epsilon {status.spent:.3f}"
    )


def main() -> None:
    """Build both histories in a temporary directory and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    texts = [f"record {i}: a patient note about visit {i % 977} and follow-up {i % 31}" for i in range(args.records)]
    with tempfile.TemporaryDirectory(prefix="fedtune-ledger-scale-") as tmp:
        for name in ("steady", "growing"):
            _scenario(name, texts, args.events, args.repeats, Path(tmp))
    print("goals: ledger under 10 MB, check-before-spend under 1 s")


if __name__ == "__main__":
    main()
