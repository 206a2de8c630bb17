"""Validate model updates from sites before they can touch the global adapter.

A site is a peer the server does not control: its reply may be malformed, mistaken or malicious. An update is
accepted only if it has exactly the expected tensors, each with the global tensor's shape and dtype, only finite
values, and an update norm ``||update - global||_2`` (over all its tensors) under a configured bound. Anything else
raises :class:`~common.errors.UpdateRejectedError` naming the site and the rule, and the update is discarded whole.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from common.errors import UpdateRejectedError


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
