"""Carve one labelled dataset into simulated sites: IID, label skew (Dirichlet) or size skew.

* ``iid``: a seeded shuffle cut into near-equal parts.
* ``dirichlet:ALPHA``: for every class, site shares drawn from Dirichlet(ALPHA, ..., ALPHA) (Hsu, Qi & Brown 2019,
  "Measuring the Effects of Non-Identical Data Distribution"); small ALPHA gives sites few classes.
* ``size:RATIO``: site k gets a share proportional to RATIO**k (RATIO > 1 makes sizes skewed, labels IID).

Every site receives at least ``min_size`` examples (Dirichlet draws are repeated until they do), every example goes
to exactly one site, and the same seed always gives the same partition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from common.data.dataset import LabeledTexts
from common.errors import ConfigError

_SPEC = re.compile(r"^(iid|dirichlet:(?P<alpha>[0-9.eE+-]+)|size:(?P<ratio>[0-9.eE+-]+))$")
MAX_DIRICHLET_DRAWS = 1000


@dataclass(frozen=True)
class PartitionSpec:
    """A parsed ``--partition`` value."""

    kind: str
    alpha: float = 0.0
    ratio: float = 1.0

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        """Parse 'iid', 'dirichlet:ALPHA' or 'size:RATIO'."""
        match = _SPEC.match(text.strip())
        if match is None:
            raise ConfigError(f"partition must be iid, dirichlet:ALPHA or size:RATIO; got {text!r}")
        try:
            if match.group("alpha") is not None:
                alpha = float(match.group("alpha"))
                if not alpha > 0:
                    raise ConfigError(f"Dirichlet alpha must be > 0; got {text!r}")
                return cls(kind="dirichlet", alpha=alpha)
            if match.group("ratio") is not None:
                ratio = float(match.group("ratio"))
                if not ratio > 0:
                    raise ConfigError(f"size ratio must be > 0; got {text!r}")
                return cls(kind="size", ratio=ratio)
        except ValueError:
            raise ConfigError(f"not a number in partition {text!r}") from None
        return cls(kind="iid")


def partition_indices(
    labels: list[int] | tuple[int, ...], *, sites: int, spec: PartitionSpec, seed: int, min_size: int = 1
) -> list[list[int]]:
    """Indices of each site's examples (sorted), a disjoint cover of ``range(len(labels))``."""
    n = len(labels)
    if sites < 1:
        raise ConfigError(f"the number of sites must be >= 1; got {sites}")
    if n < sites * min_size:
        raise ConfigError(f"{n} examples cannot give {sites} sites at least {min_size} examples each")
    rng = np.random.default_rng(seed)
    if spec.kind == "dirichlet":
        parts = _dirichlet(np.asarray(labels), sites, spec.alpha, rng, min_size)
    else:
        weights = np.ones(sites) if spec.kind == "iid" else spec.ratio ** np.arange(sites, dtype=float)
        parts = _by_weights(rng.permutation(n), weights, min_size)
    return [sorted(int(i) for i in part) for part in parts]


def partition_dataset(
    dataset: LabeledTexts, *, sites: int, spec: PartitionSpec, seed: int, min_size: int = 1
) -> list[LabeledTexts]:
    """The dataset split into ``sites`` LabeledTexts sharing its label set."""
    parts = partition_indices(dataset.labels, sites=sites, spec=spec, seed=seed, min_size=min_size)
    return [dataset.subset(part, source=f"{dataset.source} [site {k} of {sites}]") for k, part in enumerate(parts)]


def _by_weights(order: np.ndarray, weights: np.ndarray, min_size: int) -> list[np.ndarray]:
    n, sites = len(order), len(weights)
    spare = n - sites * min_size
    sizes = np.full(sites, min_size) + np.floor(spare * weights / weights.sum()).astype(int)
    sizes[np.argmax(weights)] += n - sizes.sum()  # rounding remainder to the largest share
    cuts = np.cumsum(sizes)[:-1]
    return list(np.split(order, cuts))


def _dirichlet(
    labels: np.ndarray, sites: int, alpha: float, rng: np.random.Generator, min_size: int
) -> list[np.ndarray]:
    classes = np.unique(labels)
    for _ in range(MAX_DIRICHLET_DRAWS):
        buckets: list[list[int]] = [[] for _ in range(sites)]
        for cls in classes:
            members = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for site, chunk in enumerate(np.split(members, cuts)):
                buckets[site].extend(chunk.tolist())
        if min(len(b) for b in buckets) >= min_size:
            return [np.asarray(b, dtype=int) for b in buckets]
    raise ConfigError(
        f"Dirichlet({alpha}) partitions of {len(labels)} examples kept leaving a site with fewer than {min_size} "
        f"examples after {MAX_DIRICHLET_DRAWS} draws; use fewer sites, a larger alpha or more data"
    )
