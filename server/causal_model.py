"""The server's causal LM for a generate run: initial adapter, per-round evaluation, the final adapter.

Evaluation on the server's own held-out pairs (``eval-data``: prompt/response columns or JSON Lines ``messages``):
the token-level loss and perplexity on every pair's response tokens, and, on the first ``eval-generations`` pairs,
greedy generations of at most ``max-new-tokens`` tokens scored against the references with maintained libraries
(ROUGE-L with rouge-score, BLEU with sacrebleu, exact match; :mod:`common.training.generation_metrics`). The data
are the server's: no site's privacy is spent, and choosing a round by them is post-processing of DP releases.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from common.data.pairs import PairSpec, PromptResponsePairs, read_pairs_file
from common.data.templates import (
    CHAT_TEMPLATE,
    PLAIN,
    TemplateName,
    has_chat_template,
    render_prompts,
    template_name,
)
from common.federation.config import FederationConfig
from common.federation.rounds import Metrics
from common.model.adapter import load_adapter_state, save_adapter
from common.model.causal import apply_causal_lora, ensure_pad_token, load_causal_lm
from common.model.loading import load_tokenizer, resolve_base_model
from common.training.causal_batches import TokenizedPairs, tokenize_pairs
from server.model import AdapterModel


class CausalServerModel(AdapterModel):
    """Causal LM with the run's LoRA adapter, on the server."""

    def __init__(self, config: FederationConfig, *, device: str = "auto") -> None:
        self.ref = resolve_base_model(config.model)
        self.tokenizer = ensure_pad_token(load_tokenizer(self.ref))
        torch.manual_seed(config.seed)  # the initial adapter (A matrices) is a function of the run's seed
        super().__init__(config, apply_causal_lora(load_causal_lm(self.ref), config.lora), device=device)
        self._pairs: PromptResponsePairs | None = None
        self._eval: TokenizedPairs | None = None
        if config.eval_data:
            self._pairs = read_pairs_file(Path(config.eval_data), PairSpec())
            self._eval = tokenize_pairs(self._pairs, self.tokenizer, max_length=config.training.max_length)

    @property
    def can_evaluate(self) -> bool:
        """Whether the run has a server-side held-out file."""
        return self._eval is not None

    @property
    def template(self) -> TemplateName:
        """How chat records are rendered with this tokenizer, recorded with the adapter.

        Plain prompts always use the plain template; with held-out data, their first record decides (as a job's first
        training record does in ``fedtune train``).
        """
        if self._pairs is not None:
            return template_name(self._pairs.turns[0], self.tokenizer)
        return CHAT_TEMPLATE if has_chat_template(self.tokenizer) else PLAIN

    def evaluate(self, state: Mapping[str, torch.Tensor]) -> Metrics | None:
        """Loss, perplexity and (on ``eval-generations`` pairs) ROUGE-L, BLEU and exact match of ``state``."""
        if self._eval is None or self._pairs is None:
            return None
        from common.inference.generate import generate_texts
        from common.training.causal_eval import evaluate_causal
        from common.training.generation_metrics import generation_metrics

        load_adapter_state(self.model, dict(state))
        config = self.config
        causal = evaluate_causal(
            self.model,
            self._eval,
            max_tokens=config.max_tokens,
            batch_size=config.training.eval_batch_size,
            device=self.device,
        )
        metrics: dict[str, float | None] = {"loss": causal.loss, "perplexity": causal.perplexity}
        count = min(config.eval_generations, len(self._pairs))
        if count:
            scored = self._pairs.subset(range(count))
            prompts = render_prompts(scored.prompts, scored.turns, self.tokenizer)
            texts = generate_texts(
                self.model,
                self.tokenizer,
                prompts,
                max_new_tokens=config.max_new_tokens,
                device=self.device,
                max_prompt_tokens=config.training.max_length,
            )
            generated = generation_metrics(texts, scored.responses)
            metrics.update(
                generations=generated.num_examples,
                rouge_l=generated.rouge_l,
                bleu=generated.bleu,
                exact_match=generated.exact_match,
            )
        return metrics

    def save(self, state: Mapping[str, torch.Tensor], directory: Path) -> Path:
        """Write ``state`` in standard PEFT format, recording the generate task and the template."""
        load_adapter_state(self.model, dict(state))
        return save_adapter(
            self.model,
            directory,
            base_model_name=self.ref.name,
            task="generate",
            template=self.template,
            max_length=self.config.training.max_length,
        )
