"""Mixed-precision training (Micikevicius et al., ICLR 2018): what runs in half precision, and what DP-SGD needs.

Only the forward pass and the loss run under ``torch.autocast`` (matrix products in bf16/fp16); the weights stay as
they are: LoRA parameters in float32, and their gradients, the optimiser's state and Opacus's clipped sums and noise
in float32 too. ``fp32`` is no autocast at all, so a float32 run is bit for bit what it was before this module.

Invariants (DP-SGD's guarantee must survive the lower precision):

* **fp16 is refused under DP.** fp16 needs loss scaling (a ``GradScaler``): the loss is multiplied by S before
  backward and the gradients divided by S before the step. The scaler unscales ``p.grad`` only; Opacus clips the
  per-sample gradients, which are S times each example's gradient, and then overwrites ``p.grad`` with their clipped,
  noised sum. So C bounds S*g (S itself changes as training runs), not the gradient the plan's clip is about, and the
  scaler skips a step, and lowers S, whenever the un-noised summed gradient overflowed: a data-dependent decision the
  DP analysis does not cover (while the accountant still charges the step). Without DP, fp16 uses a scaler.
* **bf16 needs no scaler** (its exponent range is float32's), but Opacus computes each example's norm, and from it
  the clip factor, in bf16 when the per-sample gradients are bf16 (``DPOptimizer.clip_and_accumulate``; it casts the
  gradients up only after). A bf16 rounding is off by at most u = 2^-8 relatively, and at most four roundings lie
  between the clip factor Opacus applies and ``C / ||g||``: the per-parameter norms, their combined norm, the
  ``+ 1e-6`` (only when the norm is below about 2.6e-4) and the division. A clipped gradient can therefore reach
  ``C * (1 + u) / (1 - u)^3``, about ``C * (1 + 4u)``, ABOVE the bound the accountant assumes. So Opacus is given
  ``C' = C * (1 - 2^-6)`` and ``sigma' = sigma * C / C'``: every clipped per-example gradient has norm at most
  ``C' * (1 + u) / (1 - u)^3 < C``, and the noise's standard deviation ``sigma' * C'`` is exactly ``sigma * C``,
  what the accountant charges for sigma (:func:`opacus_clip_and_noise`). The ledger still records sigma and C.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Literal, NamedTuple

import torch

from common.errors import ConfigError

#: fp32: no autocast; bf16 / fp16: the forward pass and the loss under ``torch.autocast`` in that dtype.
Precision = Literal["fp32", "bf16", "fp16"]

#: How far below C the clip handed to Opacus lies under bf16 (see the module docstring): 2^-6 >= 4 * 2^-8.
BF16_CLIP_MARGIN = 2.0**-6

_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}

FP16_UNDER_DP = (
    "--precision fp16 cannot be used with DP-SGD: fp16 needs loss scaling, which multiplies each example's gradient "
    "before Opacus clips it, and Opacus does not unscale per-sample gradients, so the clip C would bound the scaled "
    "gradients instead (and steps skipped on overflow would depend on un-noised gradients); use --precision bf16 "
    "(no loss scaling needed) or fp32"
)


class OpacusClip(NamedTuple):
    """The noise multiplier and clip norm handed to Opacus's ``DPOptimizer`` for a planned (sigma, C)."""

    noise_multiplier: float
    max_grad_norm: float


def check_precision(precision: str, device: torch.device, *, private: bool) -> Precision:
    """``precision`` if this device can train in it (privately, when ``private``); a ConfigError saying why not.

    Call it before any budget is spent: a refusal here costs nothing.
    """
    if precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"precision must be fp32, bf16 or fp16; got {precision!r}")
    if precision == "fp16" and private:
        raise ConfigError(FP16_UNDER_DP)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            "--precision bf16 was requested but this CUDA device does not support bfloat16 (compute capability 8.0 "
            "or later, e.g. A100/H100, is needed); use --precision fp32"
        )
    if precision != "fp32" and not torch.amp.is_autocast_available(device.type):
        raise ConfigError(f"--precision {precision}: torch has no autocast for device type {device.type!r}")
    return precision  # type: ignore[return-value]  # narrowed by the checks above


def autocast(precision: Precision, device: torch.device) -> AbstractContextManager[object]:
    """The context the forward pass and the loss run in: ``torch.autocast`` in bf16/fp16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=_DTYPES[precision])


def grad_scaler(precision: Precision, device: torch.device, *, private: bool) -> torch.amp.GradScaler | None:
    """A loss scaler for non-private fp16 (fp16's narrow range underflows small gradients); None otherwise."""
    if precision != "fp16":
        return None
    if private:  # callers validate first; this guards the invariant itself
        raise ConfigError(FP16_UNDER_DP)
    return torch.amp.GradScaler(device.type)


def opacus_clip_and_noise(*, noise_multiplier: float, max_grad_norm: float, precision: Precision) -> OpacusClip:
    """What to hand Opacus so that the mechanism is (sigma, C) exactly: unchanged, except under bf16 (module doc).

    Under bf16: clip ``C' = C * (1 - BF16_CLIP_MARGIN)`` and noise multiplier ``sigma * C / C'``, so every clipped
    per-example gradient stays within C despite bf16 norms, and the noise's standard deviation is ``sigma * C``.
    """
    if precision != "bf16":
        return OpacusClip(noise_multiplier, max_grad_norm)
    clip = max_grad_norm * (1.0 - BF16_CLIP_MARGIN)
    return OpacusClip(noise_multiplier * max_grad_norm / clip, clip)


class MixedPrecision:
    """What the trainer does differently per precision: the autocast context, backward and the optimiser step.

    For fp32 (and bf16) ``backward`` and ``step`` are plain ``loss.backward()`` and ``optimizer.step()``; for
    non-private fp16 they go through the GradScaler (scale the loss; unscale, skip a step whose gradients overflowed,
    adapt the scale).
    """

    def __init__(self, precision: str, device: torch.device, *, private: bool) -> None:
        self.precision = check_precision(precision, device, private=private)
        self.device = device
        self.scaler = grad_scaler(self.precision, device, private=private)

    def autocast(self) -> AbstractContextManager[object]:
        """The context of the forward pass and the loss (:func:`autocast`)."""
        return autocast(self.precision, self.device)

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` (scaled first when a scaler is in use)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Take the optimiser step (through the scaler when in use, which then updates its scale)."""
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)
        self.scaler.update()
