"""Gradient checkpointing (Chen et al., 2016) during DP-SGD: recompute activations in backward, Opacus-safe.

Recomputation is a second forward pass for one backward pass; Opacus's hooks must not see it
(:func:`pause_opacus_hooks`). With them paused, per-example gradients are bit for bit those of the run without
checkpointing (tests/common/training/test_checkpointing.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from opacus import GradSampleModule


@contextlib.contextmanager
def checkpointed(model: torch.nn.Module, gsm: GradSampleModule | None) -> Iterator[None]:
    """Gradient checkpointing while training; under DP (``gsm``), with Opacus's hooks paused during recomputation."""
    from common.model.causal import disable_gradient_checkpointing, enable_gradient_checkpointing

    enable_gradient_checkpointing(model, recompute_context=None if gsm is None else lambda: pause_opacus_hooks(gsm))
    try:
        yield
    finally:
        disable_gradient_checkpointing(model)


@contextlib.contextmanager
def pause_opacus_hooks(grad_sample_module: GradSampleModule) -> Iterator[None]:
    """Opacus's hooks off while checkpointing recomputes a layer during the backward pass.

    Opacus's forward hook stores each trainable layer's input, and counts the pass, on every training-mode forward
    pass; its backward hook pops one input and decrements the count once per backward pass, and publishes the
    per-sample gradients when the count is back at zero. A recomputation is a second forward pass for the same
    backward pass: left on, it pushes an input that is never popped (the module carries it into the next chunk) and
    the count never returns to zero, so ``grad_sample`` is never set. The recomputation repeats the original pass
    (same inputs, RNG state and autocast), so the input stored the first time is the one it would store. Whatever
    the per-sample gradients are, Opacus clips the very vectors it sums, so the privacy bound does not depend on it.
    """
    enabled = grad_sample_module.hooks_enabled
    grad_sample_module.disable_hooks()
    try:
        yield
    finally:
        if enabled:
            grad_sample_module.enable_hooks()
