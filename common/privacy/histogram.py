"""Private label counts: a per-class histogram released through the Gaussian mechanism, charged to the ledger first.

``balanced`` class weights (:mod:`common.training.class_weights`) need the per-class label counts, which are
private. Under add/remove-one adjacency one record changes one count by one, so the histogram's L2 sensitivity is 1,
and releasing ``count + N(0, sigma^2)`` per class is the Gaussian mechanism (Dwork & Roth 2014, "The Algorithmic
Foundations of Differential Privacy", Theorem 3.22). That is exactly one DP-SGD step at sample rate 1 with clip 1,
so it is recorded as ``DpSgdEvent(sigma, q=1, steps=1, C=1)`` and composes with training in the ledger's accountant
(PRV lies within ~0.5% above the exact curve of Balle & Wang, ICML 2018, "Improving the Gaussian Mechanism").

Invariant of :func:`release_label_histogram`: the release is reserved, durably, BEFORE the labels are read; a
refusal raises BudgetExhaustedError having computed nothing from the data. The exact counts never leave the function:
they are not returned, logged or put in any message. Only the noisy counts, the reservation's record and sigma are.

Limitation, as for Opacus's training noise without its secure mode: torch's Gaussian sampler is neither a
cryptographic generator nor hardened against floating-point attacks (Mironov, CCS 2012).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from common.privacy.accountant import Accountant, AccountantName, get_accountant
from common.privacy.calibration import calibrate_noise_multiplier
from common.privacy.datasets import DatasetRef
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import PrivacyLedger, Reservation
from common.privacy.records import LABEL_HISTOGRAM

#: Share of a run's target epsilon spent on its label histogram. The counts only set loss weights (floored, clipped
#: and renormalised by ``balanced_weights``), so they need not be precise: at a run target of 8 (delta 1e-5) the
#: share buys sigma ~9 (PRV), a few percent of a class of a few hundred records. With N in the hundreds or more, a
#: small share suffices and training keeps ~95% of the budget; with smaller N, prefer explicit weights.
HISTOGRAM_EPSILON_SHARE = 0.05


@dataclass(frozen=True)
class NoisyHistogram:
    """Noisy per-class counts (may be fractional or negative), the noise's sigma, and the event they cost."""

    counts: tuple[float, ...]
    sigma: float
    event: DpSgdEvent


def histogram_event(sigma: float) -> DpSgdEvent:
    """The ledger event of one noisy histogram: the Gaussian mechanism as a DP-SGD step with q = 1 and clip 1."""
    return DpSgdEvent(noise_multiplier=sigma, sample_rate=1.0, steps=1, max_grad_norm=1.0)


def histogram_sigma(*, epsilon: float, delta: float, accountant: AccountantName | Accountant = "prv") -> float:
    """Smallest sigma whose single Gaussian release costs at most ``epsilon`` at ``delta`` (within 0.5%).

    Raises PrivacyParameterError for parameters out of their domains, and for an ``epsilon`` the accountant cannot
    reach: the RDP accountant's orders stop at 63, so one release never costs less than ~0.103 at delta 1e-5 under
    it (PRV has no such floor).
    """
    chosen = get_accountant(accountant) if isinstance(accountant, str) else accountant
    return calibrate_noise_multiplier(
        target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=1, max_grad_norm=1.0, accountant=chosen
    )


def release_label_histogram(
    ledger: PrivacyLedger,
    *,
    dataset: DatasetRef,
    labels: Sequence[int],
    num_classes: int,
    sigma: float,
    delta: float,
    limit: float | None,
    accountant: AccountantName = "prv",
    run_id: str,
    round: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[NoisyHistogram, Reservation]:
    """Reserve one Gaussian histogram release on ``dataset``, then count ``labels``, add noise, commit, return.

    ``labels`` holds one label in [0, num_classes) per record of ``dataset`` (a deduplicated training set, see
    :mod:`common.data.dedupe`: a record counted twice would have sensitivity 2); only their number is checked before
    the reservation. ``generator`` seeds the noise (tests, reproducible runs); None draws a seed from the OS.

    Raises BudgetExhaustedError (ledger unchanged, labels unread) if the release would pass ``limit``, and
    ValueError for labels that do not fit the dataset (before the reservation if their number differs; after it,
    leaving it reserved and counted as spent, if a label is out of range).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; got {num_classes}")
    if len(labels) != dataset.num_examples:
        raise ValueError(
            f"{len(labels)} labels for the {dataset.num_examples} records of dataset {dataset.dataset_id}: "
            "a label histogram needs exactly one label per (deduplicated) record"
        )
    event = histogram_event(sigma)
    reservation = ledger.reserve(
        dataset=dataset,
        event=event,
        delta=delta,
        limit=limit,
        accountant=accountant,
        run_id=run_id,
        round=round,
        purpose=LABEL_HISTOGRAM,
    )
    # Reserved and durable: only now are the labels read.
    indices = torch.as_tensor(list(labels), dtype=torch.int64)
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}) (the reservation stays counted as spent)")
    if generator is None:
        generator = torch.Generator().manual_seed(secrets.randbits(63))
    noise = torch.normal(0.0, sigma, size=(num_classes,), generator=generator, dtype=torch.float64)
    noisy = torch.bincount(indices, minlength=num_classes).to(torch.float64) + noise
    ledger.commit(reservation)
    return NoisyHistogram(counts=tuple(noisy.tolist()), sigma=sigma, event=event), reservation
