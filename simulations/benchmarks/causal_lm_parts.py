"""Parts of the causal-LM step benchmark (:mod:`simulations.benchmarks.causal_lm_step`).

Model presets, the random data both arms train on, and the statistics that compare the arms (medians over steps and
processes, DP/non-DP ratios).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import LlamaConfig

TIME_GOAL, MEMORY_GOAL = 1.3, 1.2
LORA_RANK = 8
LORA_TARGETS = ("q_proj", "v_proj")


@dataclass(frozen=True)
class Preset:
    """A Llama-style architecture (multi-head attention: as many key/value heads as query heads)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    tie_embeddings: bool

    def llama_config(self, max_positions: int) -> LlamaConfig:
        """The transformers config (no weights are built)."""
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab,
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.heads,
            max_position_embeddings=max_positions,
            tie_word_embeddings=self.tie_embeddings,
            attention_dropout=0.0,
            use_cache=False,
        )


#: cpu: GPT-2-small-sized, tied embeddings (~110M); gpu: TinyLlama-like width, 16 layers, untied head (~0.94B).
PRESETS: dict[str, Preset] = {
    "tiny": Preset(hidden=256, layers=2, heads=4, intermediate=512, vocab=8000, tie_embeddings=True),
    "cpu": Preset(hidden=768, layers=12, heads=12, intermediate=2048, vocab=32000, tie_embeddings=True),
    "gpu": Preset(hidden=2048, layers=16, heads=16, intermediate=5504, vocab=32000, tie_embeddings=False),
}


def parameter_count(preset: Preset) -> int:
    """The model's parameter count, from the architecture alone (no bias anywhere; RMSNorm has one weight vector)."""
    h = preset.hidden
    attention = 4 * h * h  # q, k, v, o (as many key/value heads as query heads)
    mlp = 3 * h * preset.intermediate  # gate, up, down
    layer = attention + mlp + 2 * h  # two RMSNorms
    embeddings = preset.vocab * h * (1 if preset.tie_embeddings else 2)
    return embeddings + preset.layers * layer + h  # final norm


def lora_parameter_count(preset: Preset, rank: int = LORA_RANK) -> int:
    """Trainable LoRA scalars with rank ``rank`` on ``q_proj`` and ``v_proj`` (both h -> h here)."""
    return preset.layers * len(LORA_TARGETS) * rank * (preset.hidden + preset.hidden)


def median(values: Sequence[float]) -> float:
    """The median of a non-empty sequence (a ValueError names the problem otherwise)."""
    if not values:
        raise ValueError("no measurements to summarise")
    return statistics.median(values)


def ratio(dp: float, plain: float) -> float:
    """DP over non-DP; the non-DP figure must be positive."""
    if not plain > 0:
        raise ValueError(f"the non-private figure must be > 0; got {plain}")
    return dp / plain


def summarise_arm(runs: Sequence[dict[str, Any]], memory_key: str) -> dict[str, float]:
    """Median step time and tokens/s over every measured step of every process; median of the processes' peaks.

    ``rss_growth_mb`` is how far training raised peak RSS above its level once the model was built (informative on
    CPU, where the process's peak also holds the interpreter, the libraries and the frozen weights).
    """
    times = [t for run in runs for t in run["step_times_s"]]
    tokens = [n for run in runs for n in run["step_tokens"]]
    return {
        "median_step_s": median(times),
        "tokens_per_s": median([n / t for n, t in zip(tokens, times, strict=True)]),
        "peak_memory_mb": median([run[memory_key] for run in runs]),
        "rss_growth_mb": median([run["peak_rss_mb"] - run["rss_before_training_mb"] for run in runs]),
        "measured_steps": len(times),
    }


def compare(dp: dict[str, float], plain: dict[str, float]) -> dict[str, Any]:
    """The DP/non-DP ratios and whether each meets its goal."""
    time_ratio = ratio(dp["median_step_s"], plain["median_step_s"])
    memory_ratio = ratio(dp["peak_memory_mb"], plain["peak_memory_mb"])
    return {
        "time_ratio": time_ratio,
        "tokens_per_s_ratio": ratio(dp["tokens_per_s"], plain["tokens_per_s"]),
        "memory_ratio": memory_ratio,
        "time_goal": TIME_GOAL,
        "memory_goal": MEMORY_GOAL,
        "time_ok": time_ratio <= TIME_GOAL,
        "memory_ok": memory_ratio <= MEMORY_GOAL,
    }


class RandomTokens:
    """``count`` examples of exactly ``length`` random token ids; labels ``-100`` on the first half (the prompt).

    Satisfies :class:`common.training.task.TrainData`; counts the tokens it hands out (``tokens_served``).
    """

    def __init__(self, count: int, length: int, vocab: int, seed: int = 0) -> None:
        import torch

        from common.training.causal_batches import IGNORE_INDEX

        generator = torch.Generator().manual_seed(seed)
        self._ids = torch.randint(0, vocab, (count, length), generator=generator)
        self._labels = self._ids.clone()
        self._labels[:, : length // 2] = IGNORE_INDEX
        self.lengths = [length] * count
        self.tokens_served = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, indices: Sequence[int], device: torch.device) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``({"input_ids", "attention_mask"}, labels)`` for ``indices`` on ``device`` (no padding needed)."""
        import torch

        if not indices:
            raise ValueError("cannot build an empty batch")
        rows = torch.tensor(list(indices))
        input_ids = self._ids[rows]
        self.tokens_served += input_ids.numel()
        inputs = {"input_ids": input_ids.to(device), "attention_mask": torch.ones_like(input_ids).to(device)}
        return inputs, self._labels[rows].to(device)
