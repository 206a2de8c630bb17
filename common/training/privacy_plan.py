"""A job's privacy plan: the recipe's choices, the step plan and the calibrated noise, fixed before training.

Shared by both tasks' jobs (:mod:`common.training.job`, :mod:`common.training.generate_job`): the whole plan is
computed, and projected against the ledger, before the first epoch is reserved.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from common.privacy.accountant import get_accountant
from common.privacy.calibration import calibrate_noise_multiplier
from common.privacy.events import DpSgdEvent
from common.privacy.histogram import HISTOGRAM_EPSILON_SHARE, histogram_event, histogram_sigma
from common.training.batches import StepPlan, plan_steps
from common.training.class_weights import parse_class_weights
from common.training.config import PrivacySettings, TrainConfig
from common.training.recipe import Recipe, RecipeInputs, choose_recipe
from common.training.trainer import DpSgdParams


@dataclass(frozen=True)
class PrivacyPlan:
    """The concrete training and privacy of a job, fixed before training.

    ``training`` is the job's training config with the recipe's choices filled in; ``epoch`` is one pass (each is
    reserved in the ledger as its own event, so a job stopped early spends only the passes it trained); ``steps``
    and ``event`` are the whole plan (``epochs`` passes), which must fit the budget before the first pass starts.
    sigma, q, clip and delta are None for a non-private job.
    """

    recipe: Recipe
    recipe_inputs: RecipeInputs
    training: TrainConfig
    epochs: int
    epoch: StepPlan
    steps: StepPlan
    dp: DpSgdParams | None
    delta: float | None
    accountant: str
    planned_epsilon: float | None
    event: DpSgdEvent | None
    histogram_event: DpSgdEvent | None = None  # the label histogram released first (balanced class weights)

    @property
    def epoch_event(self) -> DpSgdEvent | None:
        """The ledger event of one pass."""
        if self.event is None:
            return None
        return self.event.model_copy(update={"steps": self.epoch.steps})


class PlannedSettings(Protocol):
    """What a plan is made from: a job's training and privacy settings (``TrainJob``, ``GenerateJob``)."""

    @property
    def training(self) -> TrainConfig: ...  # noqa: D102

    @property
    def privacy(self) -> PrivacySettings: ...  # noqa: D102


def plan_privacy(
    job: PlannedSettings,
    num_examples: int,
    source: str,
    *,
    trainable_parameters: int = 0,
    lora_a_fan_in: int | None = None,
) -> PrivacyPlan:
    """The recipe's choices (:mod:`common.training.recipe`), steps, sample rate and calibrated noise for the job.

    ``lora_a_fan_in``: the width of trained LoRA A matrices (plain LoRA; None with A frozen), which the recipe's
    learning rate depends on.
    """
    privacy = job.privacy
    inputs = RecipeInputs(
        num_examples=num_examples,
        rounds=1,
        target_epsilon=privacy.target_epsilon if privacy.enabled else None,
        noise_multiplier=privacy.noise_multiplier if privacy.enabled else None,
        delta=privacy.delta,
        trainable_parameters=trainable_parameters,
        lora_a_fan_in=lora_a_fan_in,
    )
    recipe, training = choose_recipe(inputs, job.training, max_grad_norm=privacy.max_grad_norm)
    assert training.batch_size is not None and training.epochs is not None  # the recipe filled them in
    epoch = plan_steps(num_examples=num_examples, batch_size=training.batch_size, epochs=1, source=source)
    steps = replace(epoch, steps=epoch.steps * training.epochs)
    common: dict[str, Any] = {
        "recipe": recipe,
        "recipe_inputs": inputs,
        "training": training,
        "epochs": training.epochs,
        "epoch": epoch,
        "steps": steps,
    }
    if not privacy.enabled or recipe.max_grad_norm is None:
        return PrivacyPlan(
            **common, dp=None, delta=None, accountant=privacy.accountant, planned_epsilon=None, event=None
        )
    accountant = get_accountant(privacy.accountant)
    histogram = None
    if parse_class_weights(training.class_weights).mode == "balanced":
        # The label counts are released first, for a share of the target (or at the training's own sigma).
        share = HISTOGRAM_EPSILON_SHARE * privacy.target_epsilon if privacy.target_epsilon is not None else None
        histogram_noise = (
            histogram_sigma(epsilon=share, delta=privacy.delta, accountant=accountant)
            if share is not None
            else privacy.noise_multiplier
        )
        assert histogram_noise is not None
        histogram = histogram_event(histogram_noise)
    sigma = privacy.noise_multiplier
    if sigma is None:
        assert privacy.target_epsilon is not None  # guaranteed by PrivacySettings' validator
        sigma = calibrate_noise_multiplier(
            target_epsilon=privacy.target_epsilon,
            delta=privacy.delta,
            sample_rate=epoch.sample_rate,
            steps=steps.steps,
            max_grad_norm=recipe.max_grad_norm,
            prior=[] if histogram is None else [histogram],
            accountant=accountant,
        )
    dp = DpSgdParams(noise_multiplier=sigma, max_grad_norm=recipe.max_grad_norm)
    planned = DpSgdEvent(
        noise_multiplier=sigma, sample_rate=epoch.sample_rate, steps=steps.steps, max_grad_norm=recipe.max_grad_norm
    )
    prior = [] if histogram is None else [histogram]
    epsilon = accountant.epsilon([*prior, planned], delta=privacy.delta)
    return PrivacyPlan(
        **common,
        dp=dp,
        delta=privacy.delta,
        accountant=accountant.name,
        planned_epsilon=epsilon,
        event=planned,
        histogram_event=histogram,
    )
