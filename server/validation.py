"""Validate model updates from sites before they can touch the global adapter; choose the round's upload dtype.

A site is a peer the server does not control: its reply may be malformed, mistaken or malicious. An update is
accepted only if it has exactly the expected tensors, each with the global tensor's shape and dtype, only finite
values, and an update norm ``||update - global||_2`` (over all its tensors) under a configured bound. Anything else
raises :class:`~common.errors.UpdateRejectedError` naming the site and the rule, and the update is discarded whole.

float16 uploads (:func:`round_upload_dtype`): an accepted update lies within ``max_update_norm`` of the global in
L2, hence in every entry. If every global entry x has ``|x| + max_update_norm <= 65504`` (float16's largest finite
value), every update that could be accepted is representable in float16; otherwise some honest update would
overflow to inf and be rejected (and the global itself, cast to float16 as the reference, would hold inf), so the
round travels in float32. No value a site sends can push a later global past the bound unnoticed: the check is
made on the global before every round.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch

from common.errors import UpdateRejectedError

#: The largest finite float16 value.
FLOAT16_MAX = float(torch.finfo(torch.float16).max)


def round_upload_dtype(
    global_state: Mapping[str, torch.Tensor], keys: Iterable[str], *, configured: torch.dtype, max_update_norm: float
) -> torch.dtype:
    """The dtype this round's uploads travel in: ``configured``, or float32 where float16 cannot hold every update."""
    if configured != torch.float16:
        return configured
    largest = max((float(global_state[key].abs().max()) for key in keys if global_state[key].numel()), default=0.0)
    return configured if largest + max_update_norm <= FLOAT16_MAX else torch.float32


def validate_update(
    update: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    *,
    max_update_norm: float,
    source: str,
) -> float:
    """Check ``update`` against the current global values ``reference``; return the update norm."""
    unexpected = sorted(set(update) - set(reference))
    missing = sorted(set(reference) - set(update))
    if unexpected:
        raise UpdateRejectedError(f"{source}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected)")
    if missing:
        raise UpdateRejectedError(f"{source}: missing tensor {missing[0]!r} ({len(missing)} missing)")
    squared = 0.0
    for key, expected in reference.items():
        tensor = update[key]
        if tensor.dtype != expected.dtype:
            raise UpdateRejectedError(f"{source}: tensor {key!r} has dtype {tensor.dtype}, expected {expected.dtype}")
        if tuple(tensor.shape) != tuple(expected.shape):
            raise UpdateRejectedError(
                f"{source}: tensor {key!r} has shape {tuple(tensor.shape)}, expected {tuple(expected.shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise UpdateRejectedError(f"{source}: tensor {key!r} holds NaN or infinite values")
        squared += float((tensor.double() - expected.double()).pow(2).sum())
    norm = math.sqrt(squared)
    if not norm <= max_update_norm:
        raise UpdateRejectedError(f"{source}: update norm {norm:.4g} exceeds the bound {max_update_norm:g}")
    return norm
