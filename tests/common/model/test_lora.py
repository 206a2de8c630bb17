from __future__ import annotations

import pytest

from common.model.adapter import adapter_state, trainable_keys
from common.model.loading import load_base_classifier
from common.model.lora import LoraSettings, apply_lora, trainable_parameter_count


def _model(tiny_ref, **settings):
    return apply_lora(load_base_classifier(tiny_ref, ("neg", "pos")), LoraSettings(**settings))


def test_lora_trains_only_adapter_and_head(tiny_ref):
    model = _model(tiny_ref, r=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n or "classifier" in n for n in trainable)
    state = adapter_state(model)
    assert any(k.endswith("classifier.weight") for k in state), "the head must be saved with the adapter"
    assert trainable_keys(model) == frozenset(state)


def test_ffa_freezes_a(tiny_ref):
    full, ffa = _model(tiny_ref, r=4), _model(tiny_ref, r=4, ffa=True)
    keys = trainable_keys(ffa)
    assert keys and not any(".lora_A." in k for k in keys)
    assert any(".lora_B." in k for k in keys)
    assert all(".lora_A." not in n for n, p in ffa.named_parameters() if p.requires_grad)
    a_params = sum(v.numel() for k, v in adapter_state(full).items() if ".lora_A." in k)
    assert trainable_parameter_count(full) - trainable_parameter_count(ffa) == a_params


def test_settings_validation():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        LoraSettings(r=0)
    with pytest.raises(ValidationError, match="at least one module"):
        LoraSettings(target_modules=())
