"""Adapter tensors in and out of a PEFT model, and the standard PEFT on-disk format.

Only adapter weights ever leave a site (never the base model). On disk an adapter is the directory
``PeftModel.from_pretrained(base, dir)`` reads: ``adapter_config.json`` and ``adapter_model.safetensors`` (no pickle,
so loading a peer's adapter cannot execute code).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from common.errors import ModelError
from common.fileio import atomic_write_json

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

AdapterState = dict[str, torch.Tensor]

_ADAPTER_NAME = "default"
MODEL_INFO_FILE = "fedtune_model.json"
MODEL_INFO_FORMAT = "fedtune-adapter/1"


def read_model_info(directory: Path) -> dict[str, Any]:
    """``fedtune_model.json`` of an adapter directory ({} for adapters fedtune did not write)."""
    path = directory / MODEL_INFO_FILE
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != MODEL_INFO_FORMAT:
        raise ModelError(f"{path}: not a {MODEL_INFO_FORMAT} file")
    return info


def adapter_state(model: PeftModel) -> AdapterState:
    """A detached CPU copy of every adapter tensor (LoRA A/B and the saved head), keyed as peft saves them."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(model, save_embedding_layers=False)  # "auto" would look the base up online
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def trainable_keys(model: PeftModel) -> frozenset[str]:
    """The adapter keys whose tensors training changes (under FFA-LoRA the A matrices are excluded)."""
    keys = set()
    for name, param in model.named_parameters():
        if param.requires_grad:
            keys.add(name.replace(f".{_ADAPTER_NAME}.", ".").replace(".modules_to_save.", "."))
    known = set(adapter_state_keys(model))
    unknown = keys - known
    if unknown:
        raise ModelError(f"trainable parameters outside the adapter: {sorted(unknown)[:3]}")
    return frozenset(keys)


def adapter_state_keys(model: PeftModel) -> list[str]:
    """The adapter's keys, in peft's order."""
    from peft import get_peft_model_state_dict

    return list(get_peft_model_state_dict(model, save_embedding_layers=False).keys())


def load_adapter_state(model: PeftModel, state: AdapterState, *, partial: bool = False) -> None:
    """Copy ``state`` into ``model``'s adapter after checking keys, shapes and finiteness.

    ``partial=True`` accepts a subset of the keys (e.g. FFA-LoRA exchanges only B and the head); unknown keys are
    always an error, so a tensor can never land in an unexpected place.
    """
    from peft import set_peft_model_state_dict

    reference = adapter_state(model)
    unknown = sorted(set(state) - set(reference))
    missing = sorted(set(reference) - set(state))
    if unknown:
        raise ModelError(f"adapter has unexpected tensors: {unknown[:3]}{' ...' if len(unknown) > 3 else ''}")
    if missing and not partial:
        raise ModelError(f"adapter is missing tensors: {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(reference[key].shape):
            raise ModelError(
                f"adapter tensor {key} has shape {tuple(tensor.shape)}; expected {tuple(reference[key].shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise ModelError(f"adapter tensor {key} holds NaN or infinite values")
    merged = {**reference, **{k: v.to(reference[k].dtype) for k, v in state.items()}}
    result = set_peft_model_state_dict(model, merged)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ModelError(f"peft did not accept adapter tensors: {unexpected[:3]}")


def save_adapter(
    model: PeftModel,
    directory: Path,
    *,
    base_model_name: str,
    task: str = "classify",
    template: str | None = None,
    max_length: int | None = None,
) -> Path:
    """Write the adapter in standard PEFT format, recording ``base_model_name`` as its base model.

    Beside PEFT's files, ``fedtune_model.json`` records what PEFT does not: the task, and the pooling and label
    names (classify) or the prompt template (generate), and the token ``max_length`` inputs were truncated to in
    training and evaluation, so that ``fedtune predict``/``generate`` use the adapter as it was trained. Fields are
    only ever added: a file without ``task`` is a classifier's (written before generation existed), and one without
    ``max_length`` predates it (readers then use the training default).
    """
    directory.mkdir(parents=True, exist_ok=True)
    base_config: Any = model.get_base_model().config
    info: dict[str, Any] = {"format": MODEL_INFO_FORMAT, "base_model": base_model_name, "task": task}
    if max_length is not None:
        info["max_length"] = max_length
    if task == "generate":
        info["template"] = template
    else:
        info["pooling"] = getattr(base_config, "fedtune_pooling", "cls")
        info["labels"] = [base_config.id2label[i] for i in range(base_config.num_labels)]
    atomic_write_json(directory / MODEL_INFO_FILE, info)
    config = model.peft_config[_ADAPTER_NAME]
    previous = config.base_model_name_or_path
    config.base_model_name_or_path = base_model_name
    from common.model.loading import quiet_transformers

    try:
        # save_embedding_layers=False: we never adapt embeddings, and "auto" would look the base model up online.
        with quiet_transformers():
            model.save_pretrained(str(directory), safe_serialization=True, save_embedding_layers=False)
    finally:
        config.base_model_name_or_path = previous
    return directory


def load_adapter(base: PreTrainedModel, directory: Path) -> PeftModel:
    """Load a saved adapter onto ``base`` with peft, first giving ``base`` the pooling the adapter was trained with."""
    from peft import PeftModel

    from common.model.mean_pooler import apply_pooling

    if not (directory / "adapter_config.json").is_file():
        raise ModelError(f"{directory}: not a PEFT adapter directory (no adapter_config.json)")
    info = read_model_info(directory)
    wanted = info.get("pooling", "cls")
    if wanted not in ("cls", "mean"):
        raise ModelError(f"{directory / MODEL_INFO_FILE}: unknown pooling {wanted!r}")
    if getattr(base.config, "fedtune_pooling", "cls") != wanted:
        apply_pooling(base, wanted)
        base.config.fedtune_pooling = wanted
    try:
        return PeftModel.from_pretrained(base, str(directory))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{directory}: cannot load the adapter: {exc}") from exc


def load_causal_adapter(base: PreTrainedModel, directory: Path) -> PeftModel:
    """Load a generative adapter (``task`` generate in ``fedtune_model.json``) onto a causal LM ``base``."""
    from peft import PeftModel

    if not (directory / "adapter_config.json").is_file():
        raise ModelError(f"{directory}: not a PEFT adapter directory (no adapter_config.json)")
    try:
        return PeftModel.from_pretrained(base, str(directory))
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{directory}: cannot load the adapter: {exc}") from exc
