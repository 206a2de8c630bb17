"""Privacy behaviour of the trainer, not only that it runs (cf. opacus/tests/privacy_engine_test.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from common.data.sample import sample_dataset
from common.model.adapter import adapter_state
from common.model.loading import load_base_classifier
from common.model.lora import LoraSettings, apply_lora
from common.training.batches import StepPlan, TokenizedTexts, poisson_batches
from common.training.config import TrainConfig
from common.training.trainer import DpSgdParams, train_adapter

CPU = torch.device("cpu")


def fresh_model(tiny_ref, seed: int = 0, **lora):
    torch.manual_seed(seed)
    return apply_lora(load_base_classifier(tiny_ref, ("negative", "positive")), LoraSettings(r=8, **lora))


@pytest.fixture(scope="module")
def data(tiny_tokenizer):
    return TokenizedTexts(sample_dataset(64, seed=5), tiny_tokenizer, max_length=32)


def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([state[k].flatten() for k in sorted(state)])


def test_zero_noise_and_huge_clip_equals_plain_training(tiny_ref, data):
    """Guards against silent corruption of LoRA updates under Opacus (opacus issue 820)."""
    plan = StepPlan(num_examples=64, batch_size=64, sample_rate=1.0, steps=4)
    config = TrainConfig(optimizer="sgd", learning_rate=0.5, physical_batch_size=64)
    initial = adapter_state(fresh_model(tiny_ref))
    plain = train_adapter(fresh_model(tiny_ref), data, config=config, plan=plan, dp=None, device=CPU, seed=0)
    private = train_adapter(
        fresh_model(tiny_ref),
        data,
        config=config.model_copy(update={"physical_batch_size": 16}),
        plan=plan,
        dp=DpSgdParams(noise_multiplier=0.0, max_grad_norm=1e9),
        device=CPU,
        seed=0,
    )
    for key in initial:
        assert torch.allclose(plain.adapter[key], private.adapter[key], atol=1e-6, rtol=1e-4), key
    changed = {k for k in initial if not torch.equal(initial[k], plain.adapter[k])}
    assert any(".lora_A." in k for k in changed) and any(".lora_B." in k for k in changed)
    assert any("classifier" in k for k in changed)


def test_physical_batch_size_does_not_change_the_update(tiny_ref, data):
    plan = StepPlan(num_examples=64, batch_size=32, sample_rate=0.5, steps=3)
    dp = DpSgdParams(noise_multiplier=0.0, max_grad_norm=0.05)  # a small clip: clipping really happens
    results = [
        train_adapter(
            fresh_model(tiny_ref),
            data,
            config=TrainConfig(optimizer="sgd", learning_rate=1.0, physical_batch_size=size),
            plan=plan,
            dp=dp,
            device=CPU,
            seed=3,
        ).adapter
        for size in (5, 64)
    ]
    assert torch.allclose(flat(results[0]), flat(results[1]), atol=1e-6)


def test_added_noise_matches_sigma_times_clip_over_batch(tiny_ref, data):
    """One SGD step (lr 1) with and without noise on the same batch: the difference is exactly noise / B."""
    sigma, clip, batch = 1.5, 0.7, 16
    plan = StepPlan(num_examples=64, batch_size=batch, sample_rate=batch / 64, steps=1)
    config = TrainConfig(optimizer="sgd", learning_rate=1.0)
    noisy, clean = (
        train_adapter(
            fresh_model(tiny_ref),
            data,
            config=config,
            plan=plan,
            dp=DpSgdParams(noise_multiplier=s, max_grad_norm=clip),
            device=CPU,
            seed=11,
        ).adapter
        for s in (sigma, 0.0)
    )
    noise = (flat(clean) - flat(noisy)).numpy().astype(np.float64)
    expected_std = sigma * clip / batch
    n = noise.size
    assert n > 1000
    # The sample std of n Gaussians has relative standard error ~1/sqrt(2n); allow 5 standard errors.
    assert abs(noise.std() / expected_std - 1) < 5 / math.sqrt(2 * n)
    assert abs(noise.mean()) < 5 * expected_std / math.sqrt(n)
    assert stats.kstest(noise / expected_std, "norm").pvalue > 1e-3


def test_empty_poisson_batches_take_counted_noise_only_steps(tiny_ref, data):
    plan = StepPlan(num_examples=64, batch_size=1, sample_rate=1e-12, steps=3)  # every batch is empty
    config = TrainConfig(optimizer="sgd", learning_rate=1.0)
    initial = flat(adapter_state(fresh_model(tiny_ref)))
    outcome = train_adapter(
        fresh_model(tiny_ref),
        data,
        config=config,
        plan=plan,
        dp=DpSgdParams(noise_multiplier=1.0, max_grad_norm=1.0),
        device=CPU,
        seed=5,
    )
    assert outcome.steps == 3 and outcome.empty_batches == 3 and outcome.examples_seen == 0
    assert outcome.event is not None and outcome.event.steps == 3
    moved = (flat(outcome.adapter) - initial).numpy()
    # Three independent N(0, (sigma*C/B)^2) noise steps: std sqrt(3).
    assert moved.std() == pytest.approx(math.sqrt(3), rel=0.1)
    silent = train_adapter(
        fresh_model(tiny_ref),
        data,
        config=config,
        plan=plan,
        dp=DpSgdParams(noise_multiplier=0.0, max_grad_norm=1.0),
        device=CPU,
        seed=5,
    )
    assert torch.equal(flat(silent.adapter), initial), "an empty batch without noise must not move the model"


def test_hooks_are_removed_and_model_can_train_again(tiny_ref, data):
    model = fresh_model(tiny_ref)
    plan = StepPlan(num_examples=64, batch_size=16, sample_rate=0.25, steps=2)
    dp = DpSgdParams(noise_multiplier=1.0, max_grad_norm=1.0)
    config = TrainConfig(learning_rate=1e-2)
    first = train_adapter(model, data, config=config, plan=plan, dp=dp, device=CPU, seed=1)
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())
    assert not model._forward_hooks and not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    second = train_adapter(model, data, config=config, plan=plan, dp=dp, device=CPU, seed=1)
    assert first.event == second.event
    assert not torch.equal(flat(first.adapter), flat(second.adapter))


def test_ffa_leaves_a_untouched(tiny_ref, data):
    model = fresh_model(tiny_ref, ffa=True)
    initial = adapter_state(model)
    plan = StepPlan(num_examples=64, batch_size=16, sample_rate=0.25, steps=2)
    outcome = train_adapter(
        model,
        data,
        config=TrainConfig(learning_rate=1e-2),
        plan=plan,
        dp=DpSgdParams(noise_multiplier=1.0, max_grad_norm=1.0),
        device=CPU,
        seed=2,
    )
    a_keys = [k for k in initial if ".lora_A." in k]
    b_keys = [k for k in initial if ".lora_B." in k]
    assert a_keys and len(a_keys) == len(b_keys)  # the checks below are not vacuous
    assert all(torch.equal(initial[k], outcome.adapter[k]) for k in a_keys)
    assert all(not torch.equal(initial[k], outcome.adapter[k]) for k in b_keys)


def test_poisson_batches_have_the_right_rate():
    generator = torch.Generator().manual_seed(0)
    sizes = [len(b) for b in poisson_batches(num_examples=1000, sample_rate=0.05, steps=400, generator=generator)]
    assert len(sizes) == 400
    assert np.mean(sizes) == pytest.approx(50, rel=0.05)
    assert np.var(sizes) == pytest.approx(1000 * 0.05 * 0.95, rel=0.25)  # binomial, not fixed-size


def test_dp_params_validation():
    from common.errors import PrivacyParameterError

    with pytest.raises(PrivacyParameterError):
        DpSgdParams(noise_multiplier=-1.0, max_grad_norm=1.0)
    with pytest.raises(PrivacyParameterError):
        DpSgdParams(noise_multiplier=1.0, max_grad_norm=0.0)
