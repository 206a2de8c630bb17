"""Causal LMs: recognising them, loading them offline, LoRA targets (GPT-2's Conv1D included), pad tokens."""

from __future__ import annotations

import json

import pytest
import torch

from common.errors import ModelError
from common.model.adapter import adapter_state, trainable_keys
from common.model.causal import (
    DEFAULT_TARGETS,
    apply_causal_lora,
    default_targets,
    disable_gradient_checkpointing,
    enable_gradient_checkpointing,
    ensure_pad_token,
    is_causal_lm,
    is_gradient_checkpointing,
    load_causal_lm,
)
from common.model.loading import load_tokenizer, resolve_base_model
from common.model.lora import LoraSettings, trainable_parameter_count
from tests.causal_helpers import build_tiny_gpt2, build_tiny_llama


@pytest.fixture(scope="module")
def llama_ref(tmp_path_factory):
    return resolve_base_model(str(build_tiny_llama(tmp_path_factory.mktemp("llama"))))


@pytest.fixture(scope="module")
def gpt2_ref(tmp_path_factory):
    return resolve_base_model(str(build_tiny_gpt2(tmp_path_factory.mktemp("gpt2"))))


def test_causal_lms_are_recognised_by_their_config(llama_ref, gpt2_ref, tiny_ref, tmp_path):
    assert is_causal_lm(llama_ref) and is_causal_lm(gpt2_ref.location)  # GPT-2's architecture is "...LMHeadModel"
    assert not is_causal_lm(tiny_ref)  # the BERT classifier
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text(json.dumps({"model_type": "mistral"}))
    assert is_causal_lm(tmp_path / "bare")  # no architecture named: judged by the model type
    (tmp_path / "clf").mkdir()
    (tmp_path / "clf" / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]})
    )
    assert not is_causal_lm(tmp_path / "clf")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    with pytest.raises(ModelError, match="unreadable"):
        is_causal_lm(tmp_path / "broken")


def test_default_targets_per_model_type():
    assert default_targets("llama") == ("q_proj", "v_proj") == DEFAULT_TARGETS["qwen2"]
    assert default_targets("gpt2") == ("c_attn",)
    assert default_targets("falcon") == ("query_key_value",)  # from peft's own mapping
    with pytest.raises(ModelError, match=r"'no-such-type'.*--lora-targets"):
        default_targets("no-such-type")


def test_load_causal_lm_loads_float32_in_eval_mode_without_cache(llama_ref, tmp_path):
    model = load_causal_lm(llama_ref)
    assert model.dtype == torch.float32 and not model.training and model.config.use_cache is False
    from common.model.loading import BaseModelRef

    with pytest.raises(ModelError, match="cannot load the causal language model"):
        load_causal_lm(BaseModelRef(name="missing", location=str(tmp_path / "missing")))


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_lora_on_a_causal_lm_trains_only_lora_matrices(which, llama_ref, gpt2_ref):
    ref = llama_ref if which == "llama" else gpt2_ref
    model = apply_causal_lora(load_causal_lm(ref), LoraSettings(r=4))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    expected = ("q_proj", "v_proj") if which == "llama" else ("c_attn",)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == set(expected)
    state = adapter_state(model)
    assert trainable_keys(model) == frozenset(state) and all(".lora_" in k for k in state)
    # GPT-2's c_attn is a Conv1D (weight stored transposed): the adapter's config says so, so merging transposes right.
    from peft import LoraConfig

    config = model.peft_config["default"]
    assert isinstance(config, LoraConfig) and config.fan_in_fan_out is (which == "gpt2")
    ffa = apply_causal_lora(load_causal_lm(ref), LoraSettings(r=4, ffa=True))
    a_params = sum(v.numel() for k, v in state.items() if ".lora_A." in k)
    assert trainable_parameter_count(model) - trainable_parameter_count(ffa) == a_params


def test_lora_targets_can_be_named_and_bad_ones_are_refused(llama_ref):
    model = apply_causal_lora(load_causal_lm(llama_ref), LoraSettings(r=2, target_modules=("o_proj",)))
    assert all(".o_proj.lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    with pytest.raises(ModelError, match="cannot apply LoRA"):
        apply_causal_lora(load_causal_lm(llama_ref), LoraSettings(r=2, target_modules=("no_such_module",)))


def test_a_fresh_adapter_leaves_the_model_unchanged(gpt2_ref):
    """LoRA's B starts at zero: the adapted GPT-2 computes exactly what the base model computes."""
    torch.manual_seed(0)
    base = load_causal_lm(gpt2_ref)
    ids = torch.tensor([[2, 5, 9, 11]])
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        adapted = apply_causal_lora(base, LoraSettings(r=4))
        assert torch.allclose(adapted(input_ids=ids).logits, expected, atol=1e-6)


def test_ensure_pad_token_uses_eos_only_when_missing(llama_ref, gpt2_ref):
    gpt2 = load_tokenizer(gpt2_ref)
    assert gpt2.pad_token is None
    assert ensure_pad_token(gpt2).pad_token_id == gpt2.eos_token_id
    llama = ensure_pad_token(load_tokenizer(llama_ref))
    assert llama.pad_token == "<pad>" and llama.pad_token_id != llama.eos_token_id


def test_gradient_checkpointing_switches_on_and_off_without_leaving_hooks(llama_ref):
    model = apply_causal_lora(load_causal_lm(llama_ref), LoraSettings(r=4))
    embeddings = model.get_input_embeddings()
    hooks_before = len(embeddings._forward_hooks)
    assert not is_gradient_checkpointing(model)
    enable_gradient_checkpointing(model)
    assert is_gradient_checkpointing(model) and is_gradient_checkpointing(model.get_base_model())
    disable_gradient_checkpointing(model)
    assert not is_gradient_checkpointing(model)
    assert len(embeddings._forward_hooks) == hooks_before  # transformers' input-grad hook is gone too


def test_gradient_checkpointing_needs_a_model_that_supports_it():
    with pytest.raises(ModelError, match="does not support gradient checkpointing"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))
