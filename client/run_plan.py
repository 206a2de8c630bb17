"""What a site fixes once per run, at the run's first round: the recipe, the step plan, sigma and class weights.

Every round of a run must train with the same settings (the noise was calibrated for the whole run's plan), so they
are chosen at the first round the site takes part in and cached in the ClientApp's ``Context.state`` by run id.

* The recipe (:mod:`common.training.recipe`) sees only public facts: the site's N (which the server receives
  anyway), the run's target epsilon, the site's delta, the planned rounds and the model's trainable size. Settings
  the server gave explicitly are used as given; the site logs one line saying what was chosen and why.
* ``balanced`` class weights need the label counts: the site releases them once per run through the Gaussian
  mechanism (:mod:`common.privacy.histogram`), reserved in its ledger BEFORE training, and the run's training is
  calibrated to the rest of the run's target. The raw counts never leave this module; the noisy ones stay at the
  site. A site process that restarts mid-run releases them again (and pays again): conservative, never leaky.
* sigma is the larger of what the run's target and the site's own lifetime limit need (:meth:`PrivacyLedger.calibrate`).
* The data are preflighted against the model's tokenizer (:mod:`common.data.coverage`): a warning in the site's log,
  or, when the run asks for ``strict-data``, a refusal before anything is spent (refusing can only protect more).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass

from flwr.app import ConfigRecord, Context

from client.work import SiteWork
from common.data.coverage import check_coverage, measure_coverage
from common.errors import ConfigError
from common.federation.config import FederationConfig
from common.federation.site import SiteSettings
from common.privacy.accountant import AccountantName
from common.privacy.histogram import HISTOGRAM_EPSILON_SHARE, histogram_sigma, release_label_histogram
from common.privacy.ledger import DatasetRef, PrivacyLedger
from common.training.batches import StepPlan, plan_steps
from common.training.class_weights import balanced_weights, parse_class_weights
from common.training.config import TrainConfig
from common.training.recipe import RecipeInputs, choose_recipe

log = logging.getLogger(__name__)
RUN_PLAN_STATE = "fedtune-run-plan"


@dataclass(frozen=True)
class RunPlan:
    """The settings of every round of one run at one site."""

    training: TrainConfig  # resolved: no setting left to the recipe
    plan: StepPlan  # one round's local steps
    rounds: int
    sigma: float
    max_grad_norm: float
    class_weights: tuple[float, ...] | None
    recipe_line: str

    def to_json(self) -> str:
        """For the run's cache in ``Context.state``."""
        return json.dumps({**asdict(self), "training": self.training.model_dump(), "plan": asdict(self.plan)})

    @classmethod
    def from_json(cls, text: str) -> RunPlan:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        weights = data["class_weights"]
        return cls(
            training=TrainConfig.model_validate(data["training"]),
            plan=StepPlan(**data["plan"]),
            rounds=int(data["rounds"]),
            sigma=float(data["sigma"]),
            max_grad_norm=float(data["max_grad_norm"]),
            class_weights=None if weights is None else tuple(float(w) for w in weights),
            recipe_line=str(data["recipe_line"]),
        )


def run_plan(
    context: Context,
    *,
    ledger: PrivacyLedger,
    dataset: DatasetRef,
    work: SiteWork,
    site: SiteSettings,
    config: FederationConfig,
    run_id: str,
    planned_rounds: int,
    trainable_parameters: int,
    accountant: AccountantName,
    lora_a_fan_in: int | None = None,
) -> RunPlan:
    """The run's plan at this site: cached after the first call for ``run_id``.

    Raises DataValidationError (the data cannot support the batch), BudgetExhaustedError (the histogram release or
    the run does not fit) or PrivacyParameterError (no sigma fits); a histogram release is spent before sigma.
    """
    cache = context.state.config_records.get(RUN_PLAN_STATE, ConfigRecord())
    if run_id in cache:
        return RunPlan.from_json(str(cache[run_id]))
    coverage = measure_coverage(
        work.record_texts, work.tokenizer, max_length=config.training.max_length, source=str(site.data_path)
    )
    for line in check_coverage(coverage, strict=config.strict_data):  # strict: DataValidationError, nothing spent
        log.warning("site %s: %s", site.site_name, line)
    inputs = RecipeInputs(
        num_examples=len(work.train),
        rounds=planned_rounds,
        target_epsilon=config.target_epsilon,
        delta=site.delta,
        trainable_parameters=trainable_parameters,
        federated=True,
        lora_a_fan_in=lora_a_fan_in,
    )
    recipe, training = choose_recipe(inputs, config.training, max_grad_norm=config.max_grad_norm)
    assert training.batch_size is not None and training.epochs is not None and recipe.max_grad_norm is not None
    plan = plan_steps(
        num_examples=len(work.train), batch_size=training.batch_size, epochs=training.epochs, source=str(site.data_path)
    )
    run_epsilon = config.target_epsilon
    weights = parse_class_weights(training.class_weights)
    class_weights = weights.weights if weights.mode == "explicit" else None
    if class_weights is not None and len(class_weights) != len(config.labels):
        raise ConfigError(f"class-weights has {len(class_weights)} weights for {len(config.labels)} labels")
    if weights.mode == "balanced":
        if work.labels is None:  # a generate run: refused earlier (client.work.site_problem); never spend on it
            raise ConfigError("class-weights balanced needs labelled data")
        share = HISTOGRAM_EPSILON_SHARE * config.target_epsilon
        histogram, _ = release_label_histogram(
            ledger,
            dataset=dataset,
            labels=work.labels,
            num_classes=len(config.labels),
            sigma=histogram_sigma(epsilon=share, delta=site.delta, accountant=accountant),
            delta=site.delta,
            limit=site.max_epsilon,
            accountant=accountant,
            run_id=run_id,
            round=0,
        )
        class_weights = balanced_weights(histogram.counts)
        run_epsilon -= share  # the run's training gets the rest of the run's target
    sigma = ledger.calibrate(
        dataset=dataset,
        limit=site.max_epsilon,
        run_epsilon=run_epsilon,
        delta=site.delta,
        sample_rate=plan.sample_rate,
        steps=plan.steps,
        rounds=planned_rounds,
        max_grad_norm=recipe.max_grad_norm,
        accountant=accountant,
        run_id=run_id,
    )
    result = RunPlan(
        training=training,
        plan=plan,
        rounds=planned_rounds,
        sigma=sigma,
        max_grad_norm=recipe.max_grad_norm,
        class_weights=class_weights,
        recipe_line=f"site {site.site_name}: {recipe.describe(inputs)}; sigma {sigma:.4g} for this run",
    )
    log.info("%s", result.recipe_line)
    cache[run_id] = result.to_json()
    context.state.config_records[RUN_PLAN_STATE] = cache
    return result
