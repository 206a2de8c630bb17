"""Gradient checkpointing under Opacus: exact per-example gradients, the same updates, nothing left on the modules.

Why the trainer pauses Opacus's hooks during recomputation is shown first: without the pause, the recomputed forward
pass leaves a second input on every LoRA layer and Opacus never publishes the per-sample gradients.
"""

from __future__ import annotations

import pytest
import torch

from common.errors import ModelError
from common.model.causal import (
    apply_causal_lora,
    disable_gradient_checkpointing,
    enable_gradient_checkpointing,
    ensure_pad_token,
    is_gradient_checkpointing,
    load_causal_lm,
)
from common.model.loading import load_tokenizer, resolve_base_model
from common.model.lora import LoraSettings
from common.training.batches import StepPlan
from common.training.causal_batches import TokenizedPairs
from common.training.checkpointing import pause_opacus_hooks
from common.training.config import TrainConfig
from common.training.task import CausalLmTask
from common.training.trainer import DpSgdParams, train_adapter
from tests.causal_helpers import build_tiny_gpt2, build_tiny_llama

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

CPU = torch.device("cpu")
BUILDERS = {"llama": build_tiny_llama, "gpt2": build_tiny_gpt2}


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def ref(request, tmp_path_factory):
    return resolve_base_model(str(BUILDERS[request.param](tmp_path_factory.mktemp(request.param))))


@pytest.fixture(scope="module")
def data(ref):
    tokenizer = ensure_pad_token(load_tokenizer(ref))
    prompts = [" ".join(f"w{(i * 7 + j) % 80}" for j in range(1 + 3 * i)) for i in range(6)]
    responses = [" ".join(f"w{(i * 11 + j) % 80}" for j in range(1 + (5 * i) % 9)) for i in range(6)]
    return TokenizedPairs(prompts, responses, tokenizer, max_length=48)


def fresh_model(ref):
    torch.manual_seed(0)
    model = apply_causal_lora(load_causal_lm(ref), LoraSettings(r=4))
    with torch.no_grad():  # B starts at zero, which would make A's gradients vacuously zero
        for name, param in model.named_parameters():
            if ".lora_B." in name:
                param.normal_(0, 0.1)
    return model


def leftover_activations(model: torch.nn.Module) -> dict[str, int]:
    """Modules on which Opacus still holds stored inputs."""
    return {name: len(m.activations) for name, m in model.named_modules() if getattr(m, "activations", None)}


def per_sample_gradients(ref, data, *, checkpointing: bool, pause: bool):
    """Opacus's per-sample gradients of one chunk, and what is left on the modules and counters afterwards."""
    from opacus import GradSampleModule

    model = fresh_model(ref)
    model.train()
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=False)
    try:
        if checkpointing:
            enable_gradient_checkpointing(model, recompute_context=(lambda: pause_opacus_hooks(gsm)) if pause else None)
        inputs, labels = data.batch(range(len(data)), CPU)
        CausalLmTask().loss(gsm, inputs, labels).backward()
        params = [p for p in model.parameters() if p.requires_grad]
        samples = [p.grad_sample for p in params]
        counters = {int(p._forward_counter) for p in params}
        return samples, leftover_activations(model), counters
    finally:
        gsm.to_standard_module()


def test_without_the_pause_opacus_loses_per_sample_gradients_under_checkpointing(ref, data):
    """Opacus 1.6 as it is: the recomputation's forward hooks push a second input that no backward hook pops."""
    samples, leftovers, counters = per_sample_gradients(ref, data, checkpointing=True, pause=False)
    assert leftovers and set(leftovers.values()) == {1}  # one stale input on every LoRA layer
    assert counters == {1}  # each parameter's forward count never returns to zero...
    assert all(sample is None for sample in samples)  # ...so its per-sample gradient is never published


def test_with_the_pause_per_sample_gradients_are_bit_identical(ref, data):
    plain, plain_left, _ = per_sample_gradients(ref, data, checkpointing=False, pause=False)
    checkpointed, left, counters = per_sample_gradients(ref, data, checkpointing=True, pause=True)
    assert not plain_left and not left and counters == {0}
    assert len(plain) == len(checkpointed) > 0
    for a, b in zip(plain, checkpointed, strict=True):
        assert a is not None and a.shape[0] == len(data)
        assert torch.equal(a, b)


def train(ref, data, *, checkpointing: bool, clip: float, precision: str = "fp32", private: bool = True):
    """Three DP steps (noise 0) over several token-bounded chunks; checks the modules after every step."""
    model = fresh_model(ref)
    states: list[tuple[bool, dict[str, int]]] = []

    def after_step(done: int, planned: int, loss: float | None) -> None:
        states.append((is_gradient_checkpointing(model), leftover_activations(model)))

    outcome = train_adapter(
        model,
        data,
        config=TrainConfig(optimizer="sgd", learning_rate=0.5, physical_batch_size=len(data)),
        plan=StepPlan(num_examples=len(data), batch_size=len(data), sample_rate=1.0, steps=3),
        dp=DpSgdParams(noise_multiplier=0.0, max_grad_norm=clip) if private else None,
        device=CPU,
        seed=0,
        progress=after_step,
        task=CausalLmTask(max_tokens=48),  # several chunks a step: nothing may carry over from one to the next
        precision=precision,
        gradient_checkpointing=checkpointing,
    )
    assert states == [(checkpointing, {})] * 3  # checkpointing on while training; no stored input left behind
    assert not is_gradient_checkpointing(model) and not leftover_activations(model)
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())  # Opacus and transformers hooks
    return outcome


@pytest.mark.parametrize(
    ("clip", "precision", "private"),
    [(1e9, "fp32", True), (1e-3, "fp32", True), (1e-3, "bf16", True), (None, "fp32", False)],
    ids=["huge-clip", "clip-binds", "bf16", "no-dp"],
)
def test_checkpointing_leaves_the_update_unchanged(ref, data, clip, precision, private):
    plain = train(ref, data, checkpointing=False, clip=clip, precision=precision, private=private)
    checkpointed = train(ref, data, checkpointing=True, clip=clip, precision=precision, private=private)
    assert plain.adapter.keys() == checkpointed.adapter.keys()
    for key in plain.adapter:
        assert torch.equal(plain.adapter[key], checkpointed.adapter[key]), key
    assert checkpointed.step_losses == plain.step_losses


def test_checkpointing_switched_on_elsewhere_is_refused_under_dp(ref, data):
    model = fresh_model(ref)
    enable_gradient_checkpointing(model)  # without the trainer's pause of Opacus's hooks
    with pytest.raises(ModelError, match="gradient_checkpointing=True"):
        train_adapter(
            model,
            data,
            config=TrainConfig(optimizer="sgd", learning_rate=0.5),
            plan=StepPlan(num_examples=len(data), batch_size=len(data), sample_rate=1.0, steps=1),
            dp=DpSgdParams(noise_multiplier=1.0, max_grad_norm=1.0),
            device=CPU,
            task=CausalLmTask(),
        )
    disable_gradient_checkpointing(model)
    assert not is_gradient_checkpointing(model)
