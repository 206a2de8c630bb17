"""The training recipe: batch size, passes, learning rate and clip chosen from a site's PUBLIC facts.

A wrong guess of these settings silently wastes a privacy budget (a DP model that collapses to the majority class
spent its epsilon for nothing), and what is right depends on the data's size and the budget. The recipe chooses
them from inputs that are public or that the server already receives: the number of training examples N, the run's
target epsilon, delta, the number of rounds and the trainable size. It never reads the data itself. A setting the
user gives explicitly is used as given; only the settings left unset are chosen (and reported as such).

The rule for DP-SGD, and why:

* **Clip C = 1** with AdamW: Li et al. (ICLR 2022, "Large Language Models Can Be Strong Differentially Private
  Learners") found small clips that clip nearly every example work best; with an adaptive optimiser the scale of C
  is absorbed by the update normalisation, so only the ratio noise/clip matters, which sigma fixes.
* **Batch: the smallest power of two whose noise multiplier sigma reaches SIGMA_FLOOR**. At a fixed epsilon and
  number of passes, the noise in the averaged gradient per unit of progress hardly depends on the batch size B as
  long as sigma is large (the "effective noise" sigma/B of TAN, Sander et al., ICML 2023, is what matters; privacy
  amplification by sampling is then in its linear regime). Below sigma ~ 1 it no longer is: small batches pay more
  epsilon per unit of progress, which is why naive small batches collapse (Ponomareva et al. 2023, "How to DP-fy
  ML", section 5.4: prefer large batches). The smallest batch that stays in the efficient regime gives the most
  optimiser steps for the same privacy, so it is the one chosen.
* **Passes: enough for MIN_STEPS optimiser steps over the whole run**, at most MAX_EPOCHS per round. Larger
  batches mean fewer steps; an adaptive optimiser needs a few dozen to move. More passes also raise sigma (the
  budget is spread over more steps), which keeps the batch in the efficient regime.
* **Learning rate: NOISE_WALK / sqrt(sum of the schedule's squared factors)**. When noise dominates the averaged
  gradient, AdamW's normalised update moves every coordinate by about the learning rate in a random direction,
  so over the run the noise alone walks ``lr * sqrt(sum f_t^2)`` (f_t: the schedule's multiplier at step t), while
  the signal, normalised by the same noise scale, moves in proportion to ``lr * T * B / sigma``. Fixing the walk
  at NOISE_WALK makes the signal's share grow with N * epsilon alone, whatever the batch and passes; the learning
  rate is the knob that keeps the walk fixed. NOISE_WALK was measured (SMS Spam, 4 sites IID, epsilon 8, constant
  lr: a walk of 0.12 reached 95.8-97.1%, 0.23 reached 97.8%); the learning rate is then bounded to
  [MIN_LR, MAX_LR].
* **Plain LoRA walks less** (:func:`noise_walk`). NOISE_WALK is FFA-LoRA's (Sun et al., ICLR 2024): only B trains,
  so a walk w in B moves the weight update ``B A`` by about ``w * a`` per entry, ``a`` being the scale of A's random
  initialisation (peft: Kaiming-uniform, std ``1 / sqrt(3 * fan_in)``). When A trains too, a walk w' moves it by
  ``w' * a + w'^2`` (B's walk through A, and B times A's own walk, which is no longer small next to ``a``): the
  same NOISE_WALK would move the weights about ``w / a`` times more (8x for a 384-wide model) and collapsed a
  central DP model to the majority class. The walk is set so the update moves as FFA's does: ``w' * a + w'^2 =
  w * a``. Measured (SMS Spam, central, epsilon 8, 20 steps, MiniLM fan-in 384, rule: w' = 0.072): w' 0.25 ->
  85.9% (all ham), 0.089 -> 98.5%, 0.036 -> 97.7%.

Without DP the classic fine-tuning recipe applies (Devlin et al. 2019; Hu et al. 2022 for LoRA): batch 32, AdamW
at NON_PRIVATE_LR, the epochs the user asked for (a DP learning rate would make a non-private baseline diverge).

The recipe is deterministic: the same inputs give the same choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from common.privacy.accountant import get_accountant
from common.privacy.calibration import calibrate_noise_multiplier
from common.privacy.events import DpSgdEvent
from common.training.config import TrainConfig
from common.training.schedule import LrSchedule

#: The noise multiplier from which subsampled-Gaussian accounting is efficient (see the module docstring).
SIGMA_FLOOR = 0.9
#: Optimiser steps a run should take at least (over all rounds); fewer leave AdamW short of a useful model.
MIN_STEPS = 24
#: Passes per round the recipe will go to in order to reach MIN_STEPS (compute grows with them).
MAX_EPOCHS = 4
#: Batch bounds: below MIN_BATCH a step's noise dwarfs any signal; above MAX_BATCH a pass has too few steps. (The
#: logical batch does not bound memory: it is accumulated in physical batches of ``physical_batch_size``.)
MIN_BATCH = 16
MAX_BATCH = 4096
#: With a sigma fixed by the user, the share of the data a batch samples (what the rule picks at epsilon ~8).
FIXED_SIGMA_SAMPLE_RATE = 0.125
#: A batch never samples more than half the data per step (q <= 0.5): each step must stay a sample.
MAX_SAMPLE_RATE = 0.5
#: The noise's random-walk length per coordinate over a run (see the module docstring), and the lr bounds.
NOISE_WALK = 0.25
MIN_LR = 1e-3
MAX_LR = 1e-1
DP_CLIP = 1.0
#: The non-private baseline's settings.
NON_PRIVATE_LR = 1e-3
NON_PRIVATE_BATCH = 32
#: Passes when neither the user nor the DP rule chooses them (non-private: per round in a federation).
DEFAULT_EPOCHS = 1
DEFAULT_TRAIN_EPOCHS = 3
#: The recipe tests sigma with the RDP accountant (fast; an upper bound on epsilon, so a slightly larger sigma);
#: the job then calibrates the sigma it trains with under its own accountant.
_SEARCH_ACCOUNTANT = "rdp"


@dataclass(frozen=True)
class RecipeInputs:
    """What the recipe may look at: public facts about a site's job, never its data."""

    num_examples: int
    rounds: int
    target_epsilon: float | None  # None: non-private, or private at a fixed ``noise_multiplier``
    delta: float
    trainable_parameters: int
    federated: bool = False
    noise_multiplier: float | None = None  # a sigma the user fixed instead of a target epsilon
    lora_a_fan_in: int | None = None  # plain LoRA: the input width of the trained A matrices; None: A frozen (FFA)

    @property
    def private(self) -> bool:
        """Whether the job trains with DP-SGD."""
        return self.target_epsilon is not None or self.noise_multiplier is not None


@dataclass(frozen=True)
class Recipe:
    """The settings chosen, what was given explicitly, and the expected sigma, with a one-line account of why."""

    epochs: int
    batch_size: int
    learning_rate: float
    max_grad_norm: float | None  # None: non-private (no clipping)
    expected_sigma: float | None
    explicit: tuple[str, ...]

    def describe(self, inputs: RecipeInputs) -> str:
        """One line: the choices, which were given, and the deciding facts."""
        given = f"; given: {', '.join(self.explicit)}" if self.explicit else ""
        steps = _steps(inputs, self.batch_size, self.epochs)
        if self.expected_sigma is None or self.max_grad_norm is None:
            return (
                f"recipe (non-private, N={inputs.num_examples}): batch {self.batch_size}, {self.epochs} epoch(s), "
                f"lr {self.learning_rate:g}{given}"
            )
        noise = ""
        if inputs.trainable_parameters:
            ratio = self.expected_sigma * math.sqrt(inputs.trainable_parameters) / self.batch_size
            noise = f"; noise/signal norm per step ~{ratio:.2g}"
        return (
            f"recipe (N={inputs.num_examples}, {_budget(inputs)} over {inputs.rounds} round(s)): "
            f"batch {self.batch_size} (q={self.batch_size / inputs.num_examples:.3g}), {self.epochs} epoch(s) per "
            f"round = {steps} steps, sigma ~{self.expected_sigma:.3g}, lr {self.learning_rate:g}, clip "
            f"{self.max_grad_norm:g}{noise}{given}"
        )


def choose_recipe(
    inputs: RecipeInputs, training: TrainConfig, *, max_grad_norm: float | None = None
) -> tuple[Recipe, TrainConfig]:
    """The recipe for ``inputs`` with ``training``'s explicit settings kept; returns it and the resolved config."""
    explicit = tuple(
        name
        for name, value in (
            ("epochs", training.epochs),
            ("batch_size", training.batch_size),
            ("learning_rate", training.learning_rate),
            ("max_grad_norm", max_grad_norm if inputs.private else None),
        )
        if value is not None
    )
    if not inputs.private:
        recipe = _non_private(inputs, training, explicit)
    else:
        recipe = _private(inputs, training, max_grad_norm, explicit)
    resolved = training.resolved(epochs=recipe.epochs, batch_size=recipe.batch_size, learning_rate=recipe.learning_rate)
    return recipe, resolved


def noise_walk(lora_a_fan_in: int | None) -> float:
    """The run's per-coordinate noise walk: NOISE_WALK with A frozen (FFA-LoRA, or no fan-in given).

    With A trained: the walk that moves the weight update as much (module docstring), the positive root of
    ``w'^2 + a w' = NOISE_WALK * a``.
    """
    if lora_a_fan_in is None:
        return NOISE_WALK
    if lora_a_fan_in < 1:
        raise ValueError(f"lora_a_fan_in must be >= 1; got {lora_a_fan_in}")
    a = 1 / math.sqrt(3 * lora_a_fan_in)  # std of peft's Kaiming-uniform(a=sqrt(5)) initialisation of A
    return (-a + math.sqrt(a * a + 4 * NOISE_WALK * a)) / 2


def _non_private(inputs: RecipeInputs, training: TrainConfig, explicit: tuple[str, ...]) -> Recipe:
    default_epochs = DEFAULT_EPOCHS if inputs.federated else DEFAULT_TRAIN_EPOCHS
    return Recipe(
        epochs=training.epochs or default_epochs,
        batch_size=training.batch_size or min(NON_PRIVATE_BATCH, inputs.num_examples),
        learning_rate=training.learning_rate or NON_PRIVATE_LR,
        max_grad_norm=None,
        expected_sigma=None,
        explicit=explicit,
    )


def _private(
    inputs: RecipeInputs, training: TrainConfig, max_grad_norm: float | None, explicit: tuple[str, ...]
) -> Recipe:
    n = inputs.num_examples
    if training.batch_size is not None and training.batch_size > n:
        # A batch the data cannot support: the job's step plan refuses it, naming the data (batches.plan_steps).
        inputs = replace(inputs, num_examples=training.batch_size)
        n = training.batch_size
    largest = max(1, min(MAX_BATCH, int(n * MAX_SAMPLE_RATE)))
    batches = [training.batch_size] if training.batch_size else _powers_of_two(min(MIN_BATCH, largest), largest)
    epoch_choices = [training.epochs] if training.epochs else list(range(1, MAX_EPOCHS + 1))
    epochs, batch = epoch_choices[-1], batches[-1]
    for epochs in epoch_choices:
        # The smallest batch whose sigma reaches the floor: sigma >= floor exactly when spending at the floor would
        # cost at least the target (epsilon falls as sigma grows), one accountant evaluation per candidate.
        batch = next((b for b in batches if _reaches_floor(inputs, b, epochs)), batches[-1])
        if _steps(inputs, batch, epochs) >= MIN_STEPS:
            break
    steps = _steps(inputs, batch, epochs)
    schedule = LrSchedule.over(training.lr_schedule, steps, training.warmup_fraction)
    walk = math.sqrt(sum(schedule.factor(t) ** 2 for t in range(steps)))
    target = noise_walk(inputs.lora_a_fan_in)
    lr = training.learning_rate or float(f"{min(MAX_LR, max(MIN_LR, target / walk)):.2g}")  # 2 digits: readable
    sigma = inputs.noise_multiplier
    if sigma is None:
        assert inputs.target_epsilon is not None
        sigma = calibrate_noise_multiplier(
            target_epsilon=inputs.target_epsilon,
            delta=inputs.delta,
            sample_rate=batch / n,
            steps=steps // inputs.rounds,
            rounds=inputs.rounds,
            accountant=get_accountant(_SEARCH_ACCOUNTANT),
        )
    return Recipe(
        epochs=epochs,
        batch_size=batch,
        learning_rate=lr,
        max_grad_norm=max_grad_norm if max_grad_norm is not None else DP_CLIP,
        expected_sigma=sigma,
        explicit=explicit,
    )


def _powers_of_two(low: int, high: int) -> list[int]:
    """Powers of two from ``low`` (rounded up) to ``high``, and ``high`` itself when data is scarce."""
    values = [2**k for k in range(max(0, math.ceil(math.log2(low))), int(math.log2(high)) + 1)]
    return values or [high]


def _steps(inputs: RecipeInputs, batch: int, epochs: int) -> int:
    """Steps over the whole run (as :func:`common.training.batches.plan_steps` plans them per round)."""
    return inputs.rounds * epochs * math.ceil(inputs.num_examples / batch)


def _budget(inputs: RecipeInputs) -> str:
    if inputs.target_epsilon is not None:
        return f"epsilon {inputs.target_epsilon:g}"
    return f"fixed sigma {inputs.noise_multiplier:g}"


def _reaches_floor(inputs: RecipeInputs, batch: int, epochs: int) -> bool:
    """Whether sigma at this batch and these passes is at least SIGMA_FLOOR.

    sigma >= floor exactly when spending at the floor would cost at least the target (epsilon falls as sigma
    grows): one accountant evaluation per candidate. With a fixed sigma the budget does not depend on the batch;
    the batch is then the one that samples FIXED_SIGMA_SAMPLE_RATE of the data per step.
    """
    if inputs.target_epsilon is None:
        return batch >= inputs.num_examples * FIXED_SIGMA_SAMPLE_RATE
    return _epsilon_at_floor(inputs, batch, epochs) >= inputs.target_epsilon


def _epsilon_at_floor(inputs: RecipeInputs, batch: int, epochs: int) -> float:
    event = DpSgdEvent(
        noise_multiplier=SIGMA_FLOOR,
        sample_rate=batch / inputs.num_examples,
        steps=_steps(inputs, batch, epochs),
        max_grad_norm=DP_CLIP,
    )
    return get_accountant(_SEARCH_ACCOUNTANT).epsilon([event], delta=inputs.delta)
