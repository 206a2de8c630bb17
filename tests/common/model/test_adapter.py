from __future__ import annotations

import pytest
import torch

from common.errors import ModelError
from common.model.adapter import adapter_state, load_adapter, load_adapter_state, save_adapter
from common.model.loading import load_base_classifier
from common.model.lora import LoraSettings, apply_lora

LABELS = ("neg", "pos")


def _trained_like(tiny_ref):
    torch.manual_seed(0)
    model = apply_lora(load_base_classifier(tiny_ref, LABELS), LoraSettings(r=4))
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)  # as if trained: B no longer zero
    return model


def test_peft_format_round_trip(tiny_ref, tiny_tokenizer, tmp_path):
    model = _trained_like(tiny_ref).eval()
    save_adapter(model, tmp_path / "adapter", base_model_name="tiny")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()

    from peft import PeftModel

    loaded = PeftModel.from_pretrained(load_base_classifier(tiny_ref, LABELS), str(tmp_path / "adapter")).eval()
    inputs = tiny_tokenizer(["the battery was great", "the app was awful"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, loaded(**inputs).logits, atol=1e-6)
    again = load_adapter(load_base_classifier(tiny_ref, LABELS), tmp_path / "adapter")
    for key, value in adapter_state(model).items():
        assert torch.equal(value, adapter_state(again)[key])


def test_load_adapter_state_validates(tiny_ref):
    source, target = _trained_like(tiny_ref), _trained_like(tiny_ref)
    state = adapter_state(source)
    load_adapter_state(target, state)
    assert all(torch.equal(v, adapter_state(target)[k]) for k, v in state.items())

    key = next(iter(state))
    with pytest.raises(ModelError, match="unexpected tensors"):
        load_adapter_state(target, {**state, "evil.weight": torch.zeros(1)})
    with pytest.raises(ModelError, match="has shape"):
        load_adapter_state(target, {**state, key: torch.zeros(3, 3)})
    with pytest.raises(ModelError, match="NaN or infinite"):
        load_adapter_state(target, {**state, key: torch.full_like(state[key], float("nan"))})
    with pytest.raises(ModelError, match="missing tensors"):
        load_adapter_state(target, {key: state[key]})
    load_adapter_state(target, {key: state[key]}, partial=True)


def test_load_adapter_from_non_adapter_dir(tiny_ref, tmp_path):
    with pytest.raises(ModelError, match="not a PEFT adapter directory"):
        load_adapter(load_base_classifier(tiny_ref, LABELS), tmp_path)
