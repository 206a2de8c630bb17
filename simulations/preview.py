"""What ``fedtune simulate`` can tell before any site trains: each site's recipe and the data's coverage.

Both are computed exactly as the sites will (the recipe is a pure function of public facts, the coverage a pure
function of the texts and the tokenizer), so the preview is what the sites' logs will say; it also refuses, before
anything is written, a site whose data cannot support its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

from common.data.coverage import check_coverage, measure_coverage
from common.data.dataset import LabeledTexts
from common.data.pairs import PromptResponsePairs
from common.federation.config import FederationConfig
from common.federation.site import SiteSettings
from common.training.batches import plan_steps
from common.training.recipe import RecipeInputs, choose_recipe


def recipe_line(
    site: SiteSettings, train_size: int, config: FederationConfig, *, lora_a_fan_in: int | None = None
) -> str:
    """The site's recipe line; raises DataValidationError when its data cannot support the batch.

    ``lora_a_fan_in``: the width of trained LoRA A matrices (plain LoRA; :func:`lora_fan_in`), None with FFA.
    """
    inputs = RecipeInputs(
        num_examples=train_size,
        rounds=config.num_rounds,
        target_epsilon=config.target_epsilon,
        delta=site.delta,
        trainable_parameters=0,
        federated=True,
        lora_a_fan_in=lora_a_fan_in,
    )
    recipe, training = choose_recipe(inputs, config.training, max_grad_norm=config.max_grad_norm)
    assert training.batch_size is not None and training.epochs is not None
    plan_steps(
        num_examples=train_size, batch_size=training.batch_size, epochs=training.epochs, source=str(site.data_path)
    )
    return f"{site.site_name}: {recipe.describe(inputs)}"


def lora_fan_in(config: FederationConfig) -> int | None:
    """What the sites will measure as their LoRA A width: None with FFA (A frozen), else the model's hidden size.

    Exact for the default attention targets; the sites measure their adapted layers.
    """
    if config.lora.ffa:
        return None
    from common.model.causal import hidden_width
    from common.model.loading import resolve_base_model

    return hidden_width(resolve_base_model(config.model))


def coverage_lines(datasets: Sequence[LabeledTexts | PromptResponsePairs], config: FederationConfig) -> list[str]:
    """Warnings about data the model's tokenizer covers badly (raises DataValidationError with strict-data).

    Pairs are measured by the texts that identify them (prompt, newline, response), as the sites measure them.
    """
    from common.model.loading import load_tokenizer, resolve_base_model

    tokenizer = load_tokenizer(resolve_base_model(config.model))
    lines: list[str] = []
    for dataset in datasets:
        coverage = measure_coverage(
            dataset.texts, tokenizer, max_length=config.training.max_length, source=dataset.source
        )
        lines += check_coverage(coverage, strict=config.strict_data)
    return lines
