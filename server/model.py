"""The server's copy of the model: it initialises the shared adapter, evaluates, and writes the final adapter.

The server never trains. It builds base model + LoRA from the run's seed, so every site starts from the same
adapter (for FFA-LoRA, the same frozen A matrices for the whole run).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from common.data.readers import read_labeled_file
from common.data.spec import DataSpec
from common.federation.config import FederationConfig
from common.federation.rounds import Metrics
from common.model.adapter import adapter_state, adapter_state_keys, load_adapter_state, save_adapter, trainable_keys
from common.model.loading import load_base_classifier, load_tokenizer, resolve_base_model
from common.model.lora import apply_lora
from common.training.batches import TokenizedTexts
from common.training.device import resolve_device
from common.training.evaluation import evaluate


class ServerModel:
    """Base model with the run's LoRA adapter, on the server."""

    def __init__(self, config: FederationConfig, *, device: str = "auto") -> None:
        self.config = config
        self.ref = resolve_base_model(config.model)
        self.tokenizer = load_tokenizer(self.ref)
        torch.manual_seed(config.seed)  # the initial adapter (A matrices, head) is a function of the run's seed
        self.model = apply_lora(load_base_classifier(self.ref, config.labels, pooling=config.pooling), config.lora)
        self.device = resolve_device(device)
        self.trainable = trainable_keys(self.model)
        # Kept apart: evaluate() and save() load other adapters into the model.
        self._initial = {key: tensor.clone() for key, tensor in adapter_state(self.model).items()}
        self._eval: TokenizedTexts | None = None
        if config.eval_data:
            dataset = read_labeled_file(Path(config.eval_data), DataSpec(labels=config.labels))
            self._eval = TokenizedTexts(dataset, self.tokenizer, max_length=config.training.max_length)

    def initial_state(self) -> dict[str, torch.Tensor]:
        """The round-0 global adapter (the same on every call, whatever was evaluated or saved since)."""
        return {key: tensor.clone() for key, tensor in self._initial.items()}

    @property
    def can_evaluate(self) -> bool:
        """Whether the run has a server-side held-out file."""
        return self._eval is not None

    @property
    def adapter_keys(self) -> list[str]:
        """The adapter's tensor names, in peft's order (the order every record of the run uses)."""
        return adapter_state_keys(self.model)

    def evaluate(self, state: Mapping[str, torch.Tensor]) -> Metrics | None:
        """Metrics of ``state`` on the server's held-out file (None without one)."""
        if self._eval is None:
            return None
        load_adapter_state(self.model, dict(state))
        metrics = evaluate(self.model, self._eval, batch_size=self.config.training.eval_batch_size, device=self.device)
        return metrics.to_dict()

    def save(self, state: Mapping[str, torch.Tensor], directory: Path) -> Path:
        """Write ``state`` in standard PEFT format."""
        load_adapter_state(self.model, dict(state))
        return save_adapter(self.model, directory, base_model_name=self.ref.name)
