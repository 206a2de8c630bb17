"""The server's copy of the model: it initialises the shared adapter, evaluates, and writes the final adapter.

The server never trains. It builds base model + LoRA from the run's seed, so every site starts from the same
adapter (for FFA-LoRA, the same frozen A matrices for the whole run). A classify run holds a sequence classifier
(:class:`ServerModel`), a generate run a causal LM (:class:`server.causal_model.CausalServerModel`); the round loop
sees only :class:`AdapterModel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from peft import PeftModel


class AdapterModel:
    """What every server model shares: the base model with the run's LoRA adapter, its round-0 state and keys.

    Subclasses load the model for their task and implement ``can_evaluate``, ``evaluate`` and ``save``.
    """

    def __init__(self, config: FederationConfig, model: PeftModel, *, device: str) -> None:
        self.config = config
        self.model = model
        self.device = resolve_device(device)
        self.trainable = trainable_keys(model)
        # Kept apart: evaluate() and save() load other adapters into the model.
        self._initial = {key: tensor.clone() for key, tensor in adapter_state(model).items()}

    def initial_state(self) -> dict[str, torch.Tensor]:
        """The round-0 global adapter (the same on every call, whatever was evaluated or saved since)."""
        return {key: tensor.clone() for key, tensor in self._initial.items()}

    @property
    def adapter_keys(self) -> list[str]:
        """The adapter's tensor names, in peft's order (the order every record of the run uses)."""
        return adapter_state_keys(self.model)

    @property
    def can_evaluate(self) -> bool:
        """Whether the run has a server-side held-out file."""
        raise NotImplementedError

    def evaluate(self, state: Mapping[str, torch.Tensor]) -> Metrics | None:
        """Metrics of ``state`` on the server's held-out file (None without one)."""
        raise NotImplementedError

    def save(self, state: Mapping[str, torch.Tensor], directory: Path) -> Path:
        """Write ``state`` in standard PEFT format, with fedtune's record of the task."""
        raise NotImplementedError


class ServerModel(AdapterModel):
    """Sequence classifier with the run's LoRA adapter, on the server."""

    def __init__(self, config: FederationConfig, *, device: str = "auto") -> None:
        self.ref = resolve_base_model(config.model)
        self.tokenizer = load_tokenizer(self.ref)
        torch.manual_seed(config.seed)  # the initial adapter (A matrices, head) is a function of the run's seed
        model = apply_lora(load_base_classifier(self.ref, config.labels, pooling=config.pooling), config.lora)
        super().__init__(config, model, device=device)
        self._eval: TokenizedTexts | None = None
        if config.eval_data:
            dataset = read_labeled_file(Path(config.eval_data), DataSpec(labels=config.labels))
            self._eval = TokenizedTexts(dataset, self.tokenizer, max_length=config.training.max_length)

    @property
    def can_evaluate(self) -> bool:
        """Whether the run has a server-side held-out file."""
        return self._eval is not None

    def evaluate(self, state: Mapping[str, torch.Tensor]) -> Metrics | None:
        """Accuracy, macro-F1 and loss of ``state`` on the server's held-out file (None without one)."""
        if self._eval is None:
            return None
        load_adapter_state(self.model, dict(state))
        metrics = evaluate(self.model, self._eval, batch_size=self.config.training.eval_batch_size, device=self.device)
        return metrics.to_dict()

    def save(self, state: Mapping[str, torch.Tensor], directory: Path) -> Path:
        """Write ``state`` in standard PEFT format (with the labels and pooling it was trained with)."""
        load_adapter_state(self.model, dict(state))
        return save_adapter(
            self.model, directory, base_model_name=self.ref.name, max_length=self.config.training.max_length
        )


def build_server_model(config: FederationConfig, *, device: str = "auto") -> AdapterModel:
    """The server model for the run's task (``auto``: the base model's config decides)."""
    if config.model_task() == "generate":
        from server.causal_model import CausalServerModel

        return CausalServerModel(config, device=device)
    return ServerModel(config, device=device)
