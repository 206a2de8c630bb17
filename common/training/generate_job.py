"""One generative fine-tuning job (``fedtune train --task generate``): instruction -> response SFT of a causal LM.

The same contract as :mod:`common.training.job`: every input (output directory, ledger location, signing key, data,
model, options) is validated, the recipe and sigma chosen and the WHOLE plan projected against the limit BEFORE the
first epoch is reserved; each epoch is its own ledger event (:mod:`common.training.epochs`). One example is one
prompt/response pair; the loss is on response tokens only (prompt tokens masked), averaged per example, so
per-example clipping bounds each pair whatever its length. Physical batches are bounded by tokens
(``max_tokens``). After training, greedy generations on up to ``eval_generations`` evaluation pairs are scored
(ROUGE-L, BLEU, exact match); these metrics, like the loss, are computed on held-out data and are NOT DP.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import __version__
from common.data.instructions import instruction_dataset
from common.data.pair_split import split_pairs
from common.data.pairs import PromptResponsePairs, deduplicate_pairs, read_pairs_file
from common.fileio import atomic_write_json, remove_created_directories
from common.privacy.budget import BudgetSettings
from common.training.causal_eval import CausalEvalMetrics
from common.training.epochs import EpochsOutcome, EpochSpend, train_epochs
from common.training.generate_config import GenerateJob
from common.training.generation_metrics import GenerationMetrics
from common.training.preflight import check_ledger_location, check_output_dir, check_signing_key_file
from common.training.privacy_plan import PrivacyPlan, plan_privacy
from common.training.progress import ProgressCallback
from common.training.summary import ADAPTER_SUBDIR, EVAL_NOTE, SUMMARY_FILE


@dataclass(frozen=True)
class GenerateResult:
    """What a finished generative job reports."""

    out_dir: Path
    plan: PrivacyPlan
    outcome: EpochsOutcome
    generation: GenerationMetrics | None
    truncated_prompts: int
    summary: dict[str, Any]


def run_generate_job(
    job: GenerateJob,
    *,
    train_path: Path | None,
    eval_path: Path | None,
    out_dir: Path,
    budget: BudgetSettings,
    progress: ProgressCallback | None = None,
    on_plan: Callable[[PrivacyPlan, str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> GenerateResult:
    """Validate, plan, train epoch by epoch, generate on held-out prompts, write the adapter and ``summary.json``.

    ``on_plan(plan, recipe_line)`` is called before the first reservation; ``on_warning`` gets preflight warnings.
    An output directory this call created is removed again if the job fails before writing into it.
    """
    created = check_output_dir(out_dir)
    try:
        return _run(job, train_path, eval_path, out_dir, budget, progress, on_plan, on_warning or (lambda _: None))
    except BaseException:
        remove_created_directories(created)
        raise


def _run(
    job: GenerateJob,
    train_path: Path | None,
    eval_path: Path | None,
    out_dir: Path,
    budget: BudgetSettings,
    progress: ProgressCallback | None,
    on_plan: Callable[[PrivacyPlan, str], None] | None,
    on_warning: Callable[[str], None],
) -> GenerateResult:
    import torch

    from common.data.templates import render_prompts, template_name
    from common.errors import ModelError
    from common.inference.generate import generate_texts
    from common.model.adapter import save_adapter
    from common.model.causal import (
        apply_causal_lora,
        check_gradient_checkpointing,
        ensure_pad_token,
        is_causal_lm,
        load_causal_lm,
    )
    from common.model.loading import load_tokenizer, resolve_base_model
    from common.model.lora import lora_a_fan_in, trainable_parameter_count
    from common.training.causal_batches import tokenize_pairs
    from common.training.causal_eval import evaluate_causal
    from common.training.device import resolve_device
    from common.training.generation_metrics import generation_metrics
    from common.training.precision import check_precision
    from common.training.task import CausalLmTask

    check_ledger_location(budget.ledger)
    check_signing_key_file(budget.signing_key)
    ledger = budget.open_ledger()
    source = read_pairs_file(train_path, job.data) if train_path is not None else instruction_dataset()
    distinct, _ = deduplicate_pairs(source)
    if eval_path is not None:
        train, held_out = distinct, read_pairs_file(eval_path, job.data)
    else:
        train, held_out = split_pairs(distinct, eval_fraction=job.eval_fraction, seed=job.split_seed)
    ref = resolve_base_model(job.model)
    if not is_causal_lm(ref):
        raise ModelError(f"--task generate needs a causal language model; {job.model} is not one (--task classify)")
    device = resolve_device(job.device)
    check_precision(job.precision, device, private=job.privacy.enabled)  # e.g. fp16 under DP: refused, nothing spent
    tokenizer = ensure_pad_token(load_tokenizer(ref))
    if job.seed is not None:
        torch.manual_seed(job.seed)
    model = apply_causal_lora(load_causal_lm(ref), job.lora)
    if job.gradient_checkpointing:
        check_gradient_checkpointing(model)  # before any spend, like every other check
    trainable = trainable_parameter_count(model)
    max_length = job.training.max_length

    train_data = tokenize_pairs(train, tokenizer, max_length=max_length)
    eval_data = tokenize_pairs(held_out, tokenizer, max_length=max_length)
    if train_data.truncated_prompts:
        on_warning(
            f"{train.source}: {train_data.truncated_prompts} of {len(train)} prompts are longer than --max-length "
            f"{max_length} with their response and were cut from the left (responses are kept whole)"
        )
    plan = plan_privacy(
        job, len(train), train.source, trainable_parameters=trainable, lora_a_fan_in=lora_a_fan_in(model)
    )
    dataset = ledger.dataset(train.texts, dataset_id=str(train_path) if train_path is not None else train.source)
    spend = EpochSpend(ledger, dataset, job.privacy.delta, job.privacy.accountant, budget.max_epsilon)
    spend.project(None if plan.event is None else [plan.event])  # the whole plan must fit before anything is spent
    if on_plan is not None:
        on_plan(plan, plan.recipe.describe(plan.recipe_inputs))
    eval_batch = plan.training.eval_batch_size

    def evaluate_fn() -> CausalEvalMetrics:
        return evaluate_causal(model, eval_data, max_tokens=job.max_tokens, batch_size=eval_batch, device=device)

    outcome = train_epochs(
        model,
        train_data,
        None,
        plan=plan,
        spend=spend,
        job=job,
        device=device,
        progress=progress,
        task=CausalLmTask(max_tokens=job.max_tokens),
        evaluate_fn=evaluate_fn,
        gradient_checkpointing=job.gradient_checkpointing,
    )
    generation = None
    if job.eval_generations:
        scored = held_out.subset(range(min(job.eval_generations, len(held_out))))
        prompts = render_prompts(scored.prompts, scored.turns, tokenizer)
        texts = generate_texts(
            model, tokenizer, prompts, max_new_tokens=job.max_new_tokens, device=device, max_prompt_tokens=max_length
        )
        generation = generation_metrics(texts, scored.responses)
    template = template_name(train.turns[0] if train.turns else None, tokenizer)
    save_adapter(model, out_dir / ADAPTER_SUBDIR, base_model_name=ref.name, task="generate", template=template)
    summary = _summary(job, plan, outcome, generation, budget, ref.name, trainable, (train, held_out), template)
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    return GenerateResult(out_dir, plan, outcome, generation, train_data.truncated_prompts, summary)


def _summary(
    job: GenerateJob,
    plan: PrivacyPlan,
    outcome: EpochsOutcome,
    generation: GenerationMetrics | None,
    budget: BudgetSettings,
    base_model: str,
    trainable: int,
    data: tuple[PromptResponsePairs, PromptResponsePairs],
    template: str,
) -> dict[str, Any]:
    from common.privacy.accountant import get_accountant

    train, held_out = data
    epsilon = get_accountant(plan.accountant).epsilon(outcome.events, delta=plan.delta) if plan.delta else None
    return {
        "fedtune_version": __version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "task": "generate",
        "base_model": base_model,
        "adapter_dir": ADAPTER_SUBDIR,
        "template": template,
        "data": {
            "train": {"source": train.source, "examples": len(train), "fingerprint": train.fingerprint},
            "eval": {"source": held_out.source, "examples": len(held_out), "fingerprint": held_out.fingerprint},
        },
        "recipe": {"line": plan.recipe.describe(plan.recipe_inputs), "given": list(plan.recipe.explicit)},
        "privacy": {
            "differentially_private": plan.dp is not None,
            "epsilon": epsilon,
            "delta": plan.delta,
            "noise_multiplier": plan.dp.noise_multiplier if plan.dp else None,
            "sample_rate": plan.epoch.sample_rate if plan.dp else None,
            "max_grad_norm": plan.dp.max_grad_norm if plan.dp else None,
            "events": [event.model_dump() for event in outcome.events],
            "ledger": {"path": str(budget.ledger), "dataset_epsilon_after": outcome.epsilon_after},
            "note": EVAL_NOTE,
        },
        "training": {
            **plan.training.model_dump(),
            "max_tokens": job.max_tokens,
            "precision": job.precision,
            "gradient_checkpointing": job.gradient_checkpointing,
            "epochs_trained": len(outcome.history),
            "kept_epoch": outcome.kept_epoch,
            "steps": outcome.steps,
            "seconds": round(outcome.seconds, 3),
        },
        "lora": job.lora.model_dump(),
        "trainable_parameters": trainable,
        "metrics": {**outcome.metrics.to_dict(), **(generation.to_dict() if generation else {})},
        "history": [m.to_dict() for m in outcome.history],
    }
