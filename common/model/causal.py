"""Causal language models (Llama-, Mistral-, Qwen2-, GPT-2-, GPT-NeoX-style) and their LoRA adapters.

Generative fine-tuning trains a LoRA adapter (Hu et al., ICLR 2022) on a decoder's attention projections and nothing
else: no head is added or unfrozen (the LM head is tied to the embeddings in most decoders and stays frozen), so the
adapter holds only LoRA ``A``/``B`` matrices. FFA-LoRA (Sun et al., ICLR 2024) freezes every ``A`` as for classifiers.

Invariants:
* loading never reaches the network beyond what ``from_pretrained`` does offline (``HF_HUB_OFFLINE``): a model is a
  local directory or an already cached hub id, resolved by :func:`common.model.loading.resolve_base_model`;
* weights load in float32 unless asked otherwise: DP-SGD clips and noises per-example gradients, which half precision
  would round away (a bf16 checkpoint is upcast); mixed precision is autocast of the forward pass instead
  (:mod:`common.training.precision`), which leaves the weights as they are;
* every trainable parameter is a LoRA matrix, and LoRA's ``A``/``B`` are ``nn.Linear`` even when the adapted layer is
  GPT-2's ``Conv1D`` (peft then sets ``fan_in_fan_out``), so Opacus computes their per-example gradients.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from common.errors import ModelError
from common.model.loading import BaseModelRef, quiet_transformers
from common.model.lora import LoraSettings, wrap_with_lora

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: LoRA targets per ``config.model_type``: the query and value projections (Hu et al.'s choice), or the fused QKV
#: projection where an architecture has one. Other model types fall back to peft's own mapping.
DEFAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": ("q_proj", "v_proj"),
    "mistral": ("q_proj", "v_proj"),
    "qwen2": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",),
    "gpt_neox": ("query_key_value",),
}

#: Model types that are decoder-only language models (used when a config names no architecture).
CAUSAL_MODEL_TYPES = frozenset(
    {
        *DEFAULT_TARGETS,
        "qwen3",
        "mixtral",
        "gemma",
        "gemma2",
        "phi",
        "phi3",
        "gpt_neo",
        "gptj",
        "opt",
        "falcon",
        "bloom",
    }
)

_CAUSAL_ARCHITECTURE_SUFFIXES = ("ForCausalLM", "LMHeadModel")  # GPT-2's is "GPT2LMHeadModel"


def read_model_config(ref_or_path: BaseModelRef | str | Path) -> dict[str, Any]:
    """The model's ``config.json`` as a dict: read directly from a local directory, else through transformers' cache."""
    location = ref_or_path.location if isinstance(ref_or_path, BaseModelRef) else str(ref_or_path)
    path = Path(location).expanduser() / "config.json"
    if path.is_file():
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: unreadable model config ({exc})") from None
        if not isinstance(config, dict):
            raise ModelError(f"{path}: not a model config (a JSON object)")
        return config
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(location).to_dict()
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the config of {location!r}: {exc}") from exc


def hidden_width(ref_or_path: BaseModelRef | str | Path) -> int | None:
    """The model's hidden size from its config (``hidden_size``, ``n_embd``, ``d_model`` or ``dim``), or None.

    The input width of LoRA's A matrices on the attention projections, known without loading any weight.
    """
    config = read_model_config(ref_or_path)
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def is_causal_lm(ref_or_path: BaseModelRef | str | Path) -> bool:
    """Whether the model is a decoder-only LM, judged by its config.

    An architecture ending in ``ForCausalLM`` or ``LMHeadModel`` says yes; any other task architecture (e.g.
    ``LlamaForSequenceClassification``) says no; a config naming no task architecture is judged by its model type.
    """
    config = read_model_config(ref_or_path)
    architectures = [str(name) for name in config.get("architectures") or []]
    if any(name.endswith(_CAUSAL_ARCHITECTURE_SUFFIXES) for name in architectures):
        return True
    if any("For" in name for name in architectures):
        return False
    return config.get("model_type") in CAUSAL_MODEL_TYPES


def default_targets(model_type: str) -> tuple[str, ...]:
    """The LoRA target modules for ``model_type``: ours, else peft's mapping; an error naming the way out otherwise."""
    if model_type in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[model_type]
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS

    targets = PEFT_TARGETS.get(model_type)
    if isinstance(targets, list | tuple) and targets:
        return tuple(targets)
    raise ModelError(
        f"no default LoRA target modules for model type {model_type!r}; name them with --lora-targets "
        "(e.g. the attention projections, as in --lora-targets q_proj,v_proj)"
    )


def load_causal_lm(ref: BaseModelRef, *, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """The causal LM at ``ref``, in ``dtype`` (float32 by default; see the module's invariants), in eval mode.

    ``use_cache`` is turned off: training never reuses key/value caches, and generation asks for them itself.
    """
    from transformers import AutoModelForCausalLM

    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(ref.location, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load the causal language model {ref.name!r}: {_first_line(exc)}") from exc
    model.config.use_cache = False
    return model


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give ``tokenizer`` a pad token (its EOS) when it has none, as GPT-2's and Llama's lack one; returns it.

    Padding positions are masked out of attention and loss, so which id pads does not change training.
    """
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError("the tokenizer has neither a pad nor an end-of-sequence token; a causal LM needs an EOS")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def apply_causal_lora(model: PreTrainedModel, settings: LoraSettings) -> PeftModel:
    """Wrap the causal LM ``model`` with a fresh LoRA adapter (task ``CAUSAL_LM``); only LoRA weights stay trainable.

    Targets are ``settings.target_modules`` or :func:`default_targets` of the model type. LoRA ``A`` matrices are
    drawn from torch's global generator: seed it first for reproducible runs.
    """
    from peft import LoraConfig, TaskType

    model_type = str(getattr(model.config, "model_type", ""))
    targets = settings.target_modules or default_targets(model_type)
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=settings.r,
        lora_alpha=settings.alpha,  # type: ignore[arg-type]  # peft annotates int, accepts float
        lora_dropout=settings.dropout,
        target_modules=list(targets),
        fan_in_fan_out=_targets_conv1d(model, targets),
    )
    return wrap_with_lora(model, config, ffa=bool(settings.ffa), what=f"this {model_type or 'unknown'} model")


def enable_gradient_checkpointing(
    model: torch.nn.Module, *, recompute_context: Callable[[], AbstractContextManager[object]] | None = None
) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them (Chen et al. 2016).

    Memory for activations drops from every layer's intermediates to each layer's input, for about one more forward
    pass of compute. Uses transformers' non-reentrant checkpointing (``use_reentrant=False``: correct with inputs that
    need no gradient, as with LoRA's frozen embeddings, and with keyword arguments). ``model`` is a peft model or a
    transformers model. ``recompute_context`` (a factory) wraps each recomputation, e.g. to pause hooks that must see
    each forward pass once (Opacus's: see :mod:`common.training.trainer`). Only training-mode forward passes are
    checkpointed; undo with :func:`disable_gradient_checkpointing`.
    """
    base = check_gradient_checkpointing(model)
    kwargs: dict[str, Any] = {"use_reentrant": False}
    if recompute_context is not None:
        factory = recompute_context
        kwargs["context_fn"] = lambda: (contextlib.nullcontext(), factory())
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x names it so
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def disable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Undo :func:`enable_gradient_checkpointing`, including the embedding hook transformers adds with it."""
    base = _transformers_model(model)
    if hasattr(base, "activation_checkpointing_disable"):
        base.activation_checkpointing_disable()
    else:
        base.gradient_checkpointing_disable()
    # transformers makes the embeddings' output require grad when enabling (for reentrant checkpointing) but removes
    # that hook again only for models it loaded an adapter into itself.
    base.disable_input_require_grads()


def check_gradient_checkpointing(model: torch.nn.Module) -> Any:
    """The transformers model under ``model`` if it supports gradient checkpointing; a ModelError otherwise."""
    base = _transformers_model(model)
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ModelError(f"{type(base).__name__} does not support gradient checkpointing (--gradient-checkpointing)")
    return base


def is_gradient_checkpointing(model: torch.nn.Module) -> bool:
    """Whether any layer of ``model`` has checkpointing switched on."""
    return any(getattr(module, "gradient_checkpointing", False) is True for module in model.modules())


def _transformers_model(model: torch.nn.Module) -> Any:
    """The transformers model under a peft wrapper (or ``model`` itself)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _targets_conv1d(model: torch.nn.Module, targets: tuple[str, ...]) -> bool:
    """Whether the targeted layers are transformers' ``Conv1D`` (GPT-2), whose weight is stored transposed.

    The flag matters when a delta ``B @ A`` is merged into the weight. peft would detect Conv1D per layer and warn;
    saying it up front keeps the saved adapter config truthful and the logs quiet.
    """
    from transformers.pytorch_utils import Conv1D

    targeted = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in targets]
    return bool(targeted) and all(isinstance(m, Conv1D) for m in targeted)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
