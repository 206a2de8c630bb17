"""Mixed precision's rules: what is refused and why, the autocast context, the scaler, and the bf16 clip margin."""

from __future__ import annotations

import math

import pytest
import torch

from common.errors import ConfigError
from common.training.precision import (
    BF16_CLIP_MARGIN,
    MixedPrecision,
    autocast,
    check_precision,
    grad_scaler,
    opacus_clip_and_noise,
)

CPU = torch.device("cpu")


def test_fp16_under_dp_is_refused_and_the_message_says_why():
    with pytest.raises(ConfigError) as refused:
        check_precision("fp16", CPU, private=True)
    message = str(refused.value)
    for words in ("--precision fp16", "loss scaling", "Opacus does not unscale per-sample gradients", "bf16"):
        assert words in message
    with pytest.raises(ConfigError, match="loss scaling"):
        grad_scaler("fp16", CPU, private=True)
    with pytest.raises(ConfigError, match="loss scaling"):
        MixedPrecision("fp16", CPU, private=True)


@pytest.mark.parametrize(("precision", "private"), [("fp32", True), ("bf16", True), ("fp32", False), ("fp16", False)])
def test_supported_combinations_pass(precision, private):
    assert check_precision(precision, CPU, private=private) == precision


def test_an_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match="precision must be fp32, bf16 or fp16; got 'fp8'"):
        check_precision("fp8", CPU, private=False)


def test_bf16_on_a_cuda_device_without_bf16_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    with pytest.raises(ConfigError, match="does not support bfloat16"):
        check_precision("bf16", torch.device("cuda"), private=True)
    assert check_precision("fp32", torch.device("cuda"), private=True) == "fp32"


def test_autocast_is_a_no_op_for_fp32_and_casts_matrix_products_otherwise():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("fp32", CPU):
        assert not torch.is_autocast_enabled("cpu")
        assert (a @ b).dtype == torch.float32
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with autocast(precision, CPU):
            assert (a @ b).dtype == dtype


def test_only_non_private_fp16_gets_a_loss_scaler():
    assert grad_scaler("fp32", CPU, private=False) is None
    assert grad_scaler("bf16", CPU, private=True) is None
    assert isinstance(grad_scaler("fp16", CPU, private=False), torch.amp.GradScaler)


def test_the_opacus_mechanism_is_unchanged_but_under_bf16():
    for precision in ("fp32", "fp16"):
        assert opacus_clip_and_noise(noise_multiplier=0.7, max_grad_norm=1.3, precision=precision) == (0.7, 1.3)
    sigma, clip = 0.7, 1.3
    noise, opacus_clip = opacus_clip_and_noise(noise_multiplier=sigma, max_grad_norm=clip, precision="bf16")
    assert opacus_clip == clip * (1 - 2**-6) < clip
    assert noise * opacus_clip == pytest.approx(sigma * clip, rel=1e-15)  # the noise's std is exactly sigma * C
    assert BF16_CLIP_MARGIN >= 4 * 2**-8  # four bf16 roundings (module docstring)


def _largest_clipped_norm(clip: float, examples: int = 1000) -> float:
    """The largest norm of one example's clipped gradient, as Opacus clips bf16 per-sample gradients of norm >> 1."""
    from opacus.optimizers import DPOptimizer

    params = [torch.nn.Parameter(torch.zeros(300)), torch.nn.Parameter(torch.zeros(17, 9))]
    optimizer = DPOptimizer(
        torch.optim.SGD(params, lr=1.0), noise_multiplier=0.0, max_grad_norm=clip, expected_batch_size=1
    )
    generator = torch.Generator().manual_seed(1)
    largest = 0.0
    for _ in range(examples):
        for param in params:
            scale = math.exp(2 * float(torch.randn((), generator=generator)))
            param.grad_sample = (torch.randn((1, *param.shape), generator=generator) * scale).to(torch.bfloat16)
        optimizer.clip_and_accumulate()
        clipped = torch.cat([p.summed_grad.flatten() for p in params]).double()  # float32 sums, read exactly
        largest = max(largest, float(clipped.norm()))
        optimizer.zero_grad(set_to_none=True)
    return largest


def test_opacus_bf16_norms_overshoot_the_clip_and_the_margin_absorbs_it():
    """Why the margin exists: Opacus clips bf16 per-sample gradients with bf16 norms, which can exceed C itself."""
    assert _largest_clipped_norm(1.0) > 1.0 + 2**-9  # seen: about 1.0077 (more than one bf16 rounding above C)
    _, opacus_clip = opacus_clip_and_noise(noise_multiplier=1.0, max_grad_norm=1.0, precision="bf16")
    assert _largest_clipped_norm(opacus_clip) <= 1.0
