"""Divide prompt/response pairs: a seeded held-out split, and a partition into simulated sites.

The generative counterparts of :func:`common.data.split.train_eval_split` and
:func:`common.data.partition.partition_dataset`, with the same guarantees: deterministic for a seed, every record in
exactly one part, no empty part. Pairs have no label to stratify or skew by, so a partition is ``iid`` or
``size:RATIO`` (sizes skewed); ``dirichlet`` (label skew) is refused with the reason.
"""

from __future__ import annotations

from common.data.pairs import PromptResponsePairs
from common.data.partition import PartitionSpec, partition_indices
from common.errors import ConfigError


def split_pairs(
    pairs: PromptResponsePairs, *, eval_fraction: float, seed: int
) -> tuple[PromptResponsePairs, PromptResponsePairs]:
    """(train, held out): a seeded random ``eval_fraction`` of the records held out, both parts in file order."""
    if not 0.0 < eval_fraction < 1.0:
        raise ConfigError(f"eval fraction must be in (0, 1); got {eval_fraction}")
    held = round(len(pairs) * eval_fraction)
    if held < 1 or held >= len(pairs):
        raise ConfigError(
            f"an eval fraction of {eval_fraction} of {len(pairs)} pairs leaves an empty split; "
            "use more data or a separate evaluation file"
        )
    import numpy as np

    order = np.random.default_rng(seed).permutation(len(pairs))
    held_out = sorted(int(i) for i in order[:held])
    train = sorted(int(i) for i in order[held:])
    return pairs.subset(train), pairs.subset(held_out, source=f"{pairs.source} [held out]")


def partition_pairs(
    pairs: PromptResponsePairs, *, sites: int, spec: PartitionSpec, seed: int, min_size: int = 1
) -> list[PromptResponsePairs]:
    """``pairs`` split into ``sites`` parts (``iid`` or ``size:RATIO``), each of at least ``min_size`` records."""
    if spec.kind == "dirichlet":
        raise ConfigError("partition dirichlet skews labels; prompt/response pairs have none: use iid or size:RATIO")
    parts = partition_indices([0] * len(pairs), sites=sites, spec=spec, seed=seed, min_size=min_size)
    return [pairs.subset(part, source=f"{pairs.source} [site {k} of {sites}]") for k, part in enumerate(parts)]
