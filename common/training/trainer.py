"""Train a LoRA adapter locally with DP-SGD (Abadi et al., CCS 2016) through Opacus, or without privacy.

DP-SGD step, as implemented by Opacus's ``GradSampleModule`` (per-example gradients from hooks) and
``DPOptimizer``: sample a logical batch by Poisson sampling at rate q, clip each example's gradient to norm C, sum,
add Gaussian noise of standard deviation ``sigma * C``, divide by the *expected* batch size ``q * N``, and apply the
base optimizer. Logical batches are split into bounded physical chunks whose clipped sums accumulate before the one
noisy step. An empty Poisson batch still performs a (noise-only) step, exactly as the analysis counts it.

Mixed precision (``precision``, :mod:`common.training.precision`; Micikevicius et al., ICLR 2018) runs the forward
pass and the loss under autocast; the LoRA weights, their gradients and Opacus's sums and noise stay float32. Under
DP, fp16 is refused (its loss scaling breaks the clip bound) and bf16 hands Opacus a clip slightly below C with a
noise multiplier raised to match, so the mechanism is exactly the planned (sigma, C) despite bf16 norms.

Gradient checkpointing (:mod:`common.training.checkpointing`; Chen et al. 2016) recomputes each layer's activations
in the backward pass. Under DP, Opacus's hooks are paused during the recomputation (``pause_opacus_hooks`` says
why); per-sample gradients are then those of the run without checkpointing (tested bit for bit). Opacus still keeps
each LoRA layer's input until the backward pass, so under DP it saves less memory.

Invariants:
* every planned step is taken, whatever the batch sizes drawn, so the returned event (sigma, q, steps) is exactly
  what the accountant must charge;
* only adapter parameters are trainable; the returned adapter is a detached CPU copy;
* Opacus hooks are removed and checkpointing switched off before returning, so the model can be trained again (e.g.
  the next round) and evaluated as it was.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from common.errors import ModelError, PrivacyParameterError
from common.model.adapter import AdapterState, adapter_state
from common.privacy.events import DpSgdEvent
from common.training.batches import StepPlan, poisson_batches, shuffled_batches
from common.training.checkpointing import checkpointed
from common.training.config import TrainConfig
from common.training.precision import MixedPrecision, Precision, opacus_clip_and_noise
from common.training.progress import ProgressCallback
from common.training.schedule import LrSchedule
from common.training.task import ClassificationTask, TrainData, TrainTask

if TYPE_CHECKING:
    from peft import PeftModel


#: A loss over a batch: (logits, labels) -> a scalar.
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class DpSgdParams:
    """The concrete mechanism of one training job: noise multiplier sigma and per-example clip norm C."""

    noise_multiplier: float
    max_grad_norm: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise PrivacyParameterError(f"noise multiplier must be finite and >= 0; got {self.noise_multiplier}")
        if not self.max_grad_norm > 0:
            raise PrivacyParameterError(f"max grad norm must be > 0; got {self.max_grad_norm}")


@dataclass
class TrainOutcome:
    """What a training job produced: the adapter, what privacy it consumed (``event``), and its statistics."""

    adapter: AdapterState
    event: DpSgdEvent | None
    steps: int
    examples_seen: int
    empty_batches: int
    seconds: float
    step_losses: list[float] = field(default_factory=list)
    optimizer_state: dict[str, Any] = field(default_factory=dict)

    @property
    def final_loss(self) -> float | None:
        """Mean training loss over the last 10% of non-empty steps (a smoothed end-of-training loss)."""
        if not self.step_losses:
            return None
        tail = self.step_losses[-max(1, len(self.step_losses) // 10) :]
        return sum(tail) / len(tail)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A torch generator on ``device``, seeded from ``seed`` or, when None, from the OS entropy pool."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else secrets.randbits(63))
    return generator


def train_adapter(
    model: PeftModel,
    data: TrainData,
    *,
    config: TrainConfig,
    plan: StepPlan,
    dp: DpSgdParams | None,
    device: torch.device,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
    schedule: LrSchedule | None = None,
    start_step: int = 0,
    class_weights: torch.Tensor | None = None,
    optimizer_state: dict[str, Any] | None = None,
    task: TrainTask | None = None,
    precision: Precision = "fp32",
    gradient_checkpointing: bool = False,
) -> TrainOutcome:
    """Run ``plan.steps`` optimiser steps on ``data`` and return the trained adapter.

    ``dp=None`` trains without privacy (fixed-size shuffled batches); otherwise DP-SGD with Poisson sampling at
    ``plan.sample_rate`` and the given sigma and clip. Privacy parameters are keyword-only by design. ``seed`` makes
    sampling, dropout and noise reproducible (experiments only); None draws them from OS entropy.

    ``schedule`` multiplies the learning rate at each step; this call's steps are the schedule's steps
    ``start_step`` .. ``start_step + plan.steps - 1`` (a run split over rounds or epochs continues where it left
    off). ``class_weights`` weighs each example's loss by its class (each example's term depends on its own label
    only, so per-example clipping still bounds one record's contribution). ``optimizer_state`` continues the
    optimiser's moments from an earlier call (its state is returned in the outcome). ``task`` says how chunks are
    formed and their loss computed (:mod:`common.training.task`); None is sequence classification on ``data``'s
    labels, the only task ``class_weights`` applies to.

    ``precision`` runs the forward pass and the loss under autocast (bf16/fp16; fp32: none). Under DP with bf16,
    Opacus gets ``C' = C * (1 - 2^-6)`` and ``sigma * C / C'``: each example's clipped gradient stays within C although
    Opacus computes its norm in bf16, and the noise's standard deviation is exactly ``sigma * C``; the returned event
    carries the planned sigma and C (:mod:`common.training.precision`). fp16 under DP is a ConfigError.
    ``gradient_checkpointing`` recomputes activations in the backward pass (transformers models; exact under Opacus,
    see the module docstring) and is switched off again before returning.
    """
    if task is not None and class_weights is not None:
        raise ValueError("class_weights apply to the default classification task only")
    if config.learning_rate is None:  # a programming error: jobs resolve the config first (common.training.recipe)
        raise ValueError("train_adapter needs a learning rate; resolve the config with the recipe first")
    if len(data) != plan.num_examples:
        raise ValueError(f"plan is for {plan.num_examples} examples but the data has {len(data)}")
    amp = MixedPrecision(precision, device, private=dp is not None)  # validated before anything changes
    if seed is not None:
        torch.manual_seed(seed)  # dropout
    sampling_rng = make_generator(seed, torch.device("cpu"))
    model.to(device)
    model.train()  # Opacus records activations only in train mode; from_pretrained returns eval mode.
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError("the model has no trainable parameters")
    optimizer = _base_optimizer(params, config.optimizer, config.learning_rate, config.weight_decay)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    if task is None:
        task = ClassificationTask(_loss(class_weights, device))
    base_lr = config.learning_rate

    batches: Iterator[list[int]]
    grad_sample_module = None
    if dp is None:
        forward_model: torch.nn.Module = model
        batches = shuffled_batches(
            num_examples=plan.num_examples, batch_size=plan.batch_size, steps=plan.steps, generator=sampling_rng
        )
        dp_optimizer = None
    else:
        from opacus import GradSampleModule
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator

        from common.model.causal import is_gradient_checkpointing

        if not gradient_checkpointing and is_gradient_checkpointing(model):  # switched on elsewhere: no hook pause
            raise ModelError("the model has gradient checkpointing on: pass gradient_checkpointing=True under DP")
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ModelError(f"the model cannot be trained with Opacus: {errors[0]}")
        # "hooks" mode clips through any loss; "ghost" mode would silently skip clipping with model(labels=...).loss.
        grad_sample_module = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=False)
        forward_model = grad_sample_module
        # The planned (sigma, C) as Opacus must be told it: unchanged but under bf16 (common/training/precision.py).
        mechanism = opacus_clip_and_noise(
            noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm, precision=amp.precision
        )
        dp_optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=mechanism.noise_multiplier,
            max_grad_norm=mechanism.max_grad_norm,
            expected_batch_size=plan.batch_size,
            loss_reduction="mean",
            generator=make_generator(None if seed is None else seed + 1, device),
        )
        optimizer = dp_optimizer
        batches = poisson_batches(
            num_examples=plan.num_examples, sample_rate=plan.sample_rate, steps=plan.steps, generator=sampling_rng
        )

    started = time.perf_counter()
    outcome = TrainOutcome(adapter={}, event=None, steps=0, examples_seen=0, empty_batches=0, seconds=0.0)
    checkpointing = checkpointed(model, grad_sample_module) if gradient_checkpointing else contextlib.nullcontext()
    try:
        with warnings.catch_warnings(), checkpointing:
            # Opacus's full backward hooks make torch note that token ids (integer inputs) need no gradient.
            warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
            for logical in batches:
                factor = schedule.factor(start_step + outcome.steps) if schedule is not None else 1.0
                for group in optimizer.param_groups:
                    group["lr"] = base_lr * factor
                loss = _logical_step(
                    forward_model,
                    data,
                    logical,
                    optimizer,
                    dp_optimizer,
                    task,
                    device,
                    config.physical_batch_size,
                    amp,
                )
                outcome.steps += 1
                outcome.examples_seen += len(logical)
                if loss is None:
                    outcome.empty_batches += 1
                else:
                    outcome.step_losses.append(loss)
                if progress is not None:
                    progress(outcome.steps, plan.steps, loss)
    finally:
        if grad_sample_module is not None:
            grad_sample_module.to_standard_module()  # removes Opacus's hooks and grad_sample attributes
        optimizer.zero_grad(set_to_none=True)
        model.eval()
    if outcome.steps != plan.steps:
        raise RuntimeError(f"took {outcome.steps} steps but planned {plan.steps}")
    outcome.seconds = time.perf_counter() - started
    outcome.adapter = adapter_state(model)
    outcome.optimizer_state = (dp_optimizer.original_optimizer if dp_optimizer is not None else optimizer).state_dict()
    if dp is not None:
        outcome.event = DpSgdEvent(
            noise_multiplier=dp.noise_multiplier,
            sample_rate=plan.sample_rate,
            steps=plan.steps,
            max_grad_norm=dp.max_grad_norm,
        )
    return outcome


def _loss(class_weights: torch.Tensor | None, device: torch.device) -> LossFn:
    """The mean over the batch of each example's cross-entropy, times its class's weight when weights are given.

    Not torch's weighted mean (which divides by the batch's total weight): that would make one example's gradient
    depend on the other examples' labels, which per-example clipping does not bound.
    """
    per_example = torch.nn.CrossEntropyLoss(reduction="none")
    weights = None if class_weights is None else class_weights.to(device=device, dtype=torch.float32)

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        values = per_example(logits, labels)
        return (values * weights[labels]).mean() if weights is not None else values.mean()

    return loss


def _base_optimizer(
    params: list[torch.nn.Parameter], name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def _logical_step(
    model: torch.nn.Module,
    data: TrainData,
    logical: list[int],
    optimizer: torch.optim.Optimizer,
    dp_optimizer: torch.optim.Optimizer | None,
    task: TrainTask,
    device: torch.device,
    physical_batch_size: int,
    amp: MixedPrecision,
) -> float | None:
    """One optimiser step over a logical batch; returns its mean loss (None for an empty batch)."""
    chunks = task.chunks(logical, data, physical_batch_size)
    loss_sum = 0.0
    for position, chunk in enumerate(chunks):
        last = position == len(chunks) - 1
        if chunk:
            inputs, labels = data.batch(chunk, device)
            with amp.autocast():  # the forward pass and the loss; backward runs outside autocast
                loss = task.loss(model, inputs, labels)
            loss_sum += loss.item() * len(chunk)
            if dp_optimizer is None:
                # Weight each chunk by its share so accumulated gradients are the logical batch's mean.
                loss = loss * (len(chunk) / len(logical))
            amp.backward(loss)
        else:
            _set_empty_grad_samples(optimizer)
        if dp_optimizer is not None:
            # Non-final chunks only clip and accumulate; the final one adds noise once and steps.
            dp_optimizer.signal_skip_step(do_skip=not last)  # type: ignore[attr-defined]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    if dp_optimizer is None:
        amp.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
    return loss_sum / len(logical) if logical else None


def _set_empty_grad_samples(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter a zero-example per-sample gradient.

    The DP optimiser then clips nothing, adds the full noise and divides by the expected batch size: the correct DP-
    SGD step for an empty Poisson batch. (Running the
    model on an empty batch is not an option: transformer forward passes fail on zero rows.)
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad_sample = torch.zeros((0, *param.shape), device=param.device, dtype=param.dtype)
