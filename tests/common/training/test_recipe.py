"""The DP recipe: a pure, deterministic rule over public facts; explicit settings win; spend never above target."""

from __future__ import annotations

import pytest

from common.privacy.accountant import get_accountant
from common.privacy.calibration import calibrate_noise_multiplier
from common.privacy.events import DpSgdEvent
from common.training import recipe as r
from common.training.config import PrivacySettings, TrainConfig, TrainJob
from common.training.privacy_plan import plan_privacy


def inputs(n: int, epsilon: float | None = 8.0, rounds: int = 1, **extra) -> r.RecipeInputs:
    return r.RecipeInputs(
        num_examples=n, rounds=rounds, target_epsilon=epsilon, delta=1e-5, trainable_parameters=37_634, **extra
    )


# (N, epsilon, rounds) -> (batch, epochs per round, learning rate): the rule's table, written down so a change to it
# is a visible decision. Small data get small batches and more passes; big data big batches and one pass.
TABLE = [
    ((100, 8.0, 1), (16, 4, 0.047)),
    ((1000, 8.0, 3), (128, 2, 0.036)),
    ((10_000, 8.0, 1), (2048, 4, 0.056)),
    ((100_000, 8.0, 1), (4096, 1, 0.05)),
    ((10_000, 1.0, 3), (16, 1, 0.0058)),
]


@pytest.mark.parametrize(("facts", "expected"), TABLE)
def test_unit_table_of_choices(facts, expected):
    n, epsilon, rounds = facts
    recipe, training = r.choose_recipe(inputs(n, epsilon, rounds), TrainConfig())
    assert (recipe.batch_size, recipe.epochs, recipe.learning_rate) == expected
    assert (training.batch_size, training.epochs, training.learning_rate) == expected
    assert recipe.max_grad_norm == r.DP_CLIP and recipe.explicit == ()


@pytest.mark.parametrize(("facts", "expected"), TABLE)
def test_the_batch_is_the_smallest_power_of_two_whose_sigma_reaches_the_floor(facts, expected):
    n, epsilon, rounds = facts
    batch, epochs, _ = expected
    accountant = get_accountant("rdp")

    def sigma(b: int) -> float:
        steps = epochs * -(-n // b)
        return calibrate_noise_multiplier(
            target_epsilon=epsilon, delta=1e-5, sample_rate=b / n, steps=steps, rounds=rounds, accountant=accountant
        )

    largest = min(r.MAX_BATCH, int(n * r.MAX_SAMPLE_RATE))
    if batch < largest:
        assert sigma(batch) >= r.SIGMA_FLOOR * 0.995
    if batch > r.MIN_BATCH:
        assert sigma(batch // 2) < r.SIGMA_FLOOR


def test_deterministic_for_the_same_inputs():
    first = r.choose_recipe(inputs(2345, 3.0, 5), TrainConfig())
    assert all(r.choose_recipe(inputs(2345, 3.0, 5), TrainConfig()) == first for _ in range(3))


def test_explicit_settings_are_kept_and_reported():
    given = TrainConfig(batch_size=50, epochs=2, learning_rate=0.3)
    recipe, training = r.choose_recipe(inputs(5000), given, max_grad_norm=0.5)
    assert (training.batch_size, training.epochs, training.learning_rate) == (50, 2, 0.3)
    assert recipe.max_grad_norm == 0.5
    assert set(recipe.explicit) == {"batch_size", "epochs", "learning_rate", "max_grad_norm"}
    assert "given: epochs, batch_size, learning_rate, max_grad_norm" in recipe.describe(inputs(5000))
    only_lr = r.choose_recipe(inputs(5000), TrainConfig(learning_rate=0.2))[1]
    assert (
        only_lr.learning_rate == 0.2
        and only_lr.batch_size == r.choose_recipe(inputs(5000), TrainConfig())[1].batch_size
    )


def test_non_private_gets_the_fine_tuning_recipe_not_the_dp_one():
    recipe, training = r.choose_recipe(inputs(10_000, None), TrainConfig())
    assert (training.batch_size, training.learning_rate, training.epochs) == (32, r.NON_PRIVATE_LR, 3)
    assert recipe.max_grad_norm is None and recipe.expected_sigma is None
    federated = r.choose_recipe(inputs(10_000, None, federated=True), TrainConfig())[1]
    assert federated.epochs == r.DEFAULT_EPOCHS
    assert "non-private" in recipe.describe(inputs(10_000, None))


@pytest.mark.parametrize(("n", "epsilon"), [(60, 1.0), (300, 8.0), (3000, 2.0), (20_000, 8.0), (1000, 30.0)])
def test_the_planned_spend_never_passes_the_target(n, epsilon):
    plan = plan_privacy(TrainJob(privacy=PrivacySettings(target_epsilon=epsilon)), n, "d.jsonl")
    assert plan.planned_epsilon is not None and plan.planned_epsilon <= epsilon * 1.0001
    assert plan.event == DpSgdEvent(
        noise_multiplier=plan.event.noise_multiplier,
        sample_rate=plan.epoch.sample_rate,
        steps=plan.epoch.steps * plan.epochs,
        max_grad_norm=r.DP_CLIP,
    )


def test_a_fixed_sigma_gets_a_recipe_too():
    recipe, training = r.choose_recipe(inputs(8000, None, noise_multiplier=1.5), TrainConfig())
    assert recipe.expected_sigma == 1.5 and training.batch_size == 1024  # 1/8 of the data per step
    assert "fixed sigma 1.5" in recipe.describe(inputs(8000, None, noise_multiplier=1.5))


def test_the_recipe_reads_only_public_facts():
    # Its whole input is this record: no texts, no labels, no counts per class.
    assert set(r.RecipeInputs.__dataclass_fields__) == {
        "num_examples",
        "rounds",
        "target_epsilon",
        "delta",
        "trainable_parameters",
        "federated",
        "noise_multiplier",
        "lora_a_fan_in",  # a property of the model, not of the data
    }


def test_plain_lora_walks_so_the_weight_update_moves_as_ffa_does():
    """With A trained, w' solves w'*a + w'^2 = NOISE_WALK*a (a: the std of A's init): smaller, and shrinking with the
    model's width; the learning rate follows it (the SMS measurement: 0.056 collapsed, 0.016-0.02 reached 98.5%)."""
    assert r.noise_walk(None) == r.NOISE_WALK
    for fan_in in (32, 384, 4096):
        a = 1 / (3 * fan_in) ** 0.5
        w = r.noise_walk(fan_in)
        assert w * a + w * w == pytest.approx(r.NOISE_WALK * a) and w < r.NOISE_WALK
    assert r.noise_walk(4096) < r.noise_walk(384) < r.noise_walk(32)
    ffa, _ = r.choose_recipe(inputs(4128), TrainConfig())
    plain, _ = r.choose_recipe(inputs(4128, lora_a_fan_in=384), TrainConfig())
    assert (plain.batch_size, plain.epochs) == (ffa.batch_size, ffa.epochs)  # only the learning rate changes
    assert (ffa.learning_rate, plain.learning_rate) == (0.056, 0.016)
    with pytest.raises(ValueError, match="lora_a_fan_in"):
        r.noise_walk(0)
