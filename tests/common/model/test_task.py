"""Which task a run fine-tunes for: ``auto`` follows the model's config; ``generate`` needs a causal LM."""

from __future__ import annotations

import pytest

from common.errors import ConfigError, ModelError
from common.model.task import resolve_task
from tests.causal_helpers import build_tiny_gpt2


def test_auto_follows_the_model_and_an_explicit_task_is_checked(tiny_model_dir, tmp_path):
    gpt2 = str(build_tiny_gpt2(tmp_path / "gpt2"))
    assert resolve_task("auto", gpt2) == "generate"
    assert resolve_task("auto", str(tiny_model_dir)) == "classify"
    assert resolve_task("classify", gpt2) == "classify"  # a causal LM may be given a classification head
    assert resolve_task("generate", gpt2) == "generate"
    with pytest.raises(ModelError, match="task generate needs a causal language model"):
        resolve_task("generate", str(tiny_model_dir))
    with pytest.raises(ConfigError, match="task must be one of auto, classify, generate"):
        resolve_task("translate", gpt2)
    with pytest.raises(ModelError, match="no such model directory"):
        resolve_task("auto", str(tmp_path / "missing"))


def test_the_lora_a_width_is_measured_only_when_a_trains(tiny_model_dir):
    from common.model.loading import load_base_classifier, resolve_base_model
    from common.model.lora import LoraSettings, apply_lora, lora_a_fan_in

    ref = resolve_base_model(str(tiny_model_dir))
    plain = apply_lora(load_base_classifier(ref, ("a", "b")), LoraSettings(ffa=False))
    ffa = apply_lora(load_base_classifier(ref, ("a", "b")), LoraSettings(ffa=True))
    from common.model.causal import hidden_width

    assert lora_a_fan_in(plain) == hidden_width(ref) and lora_a_fan_in(ffa) is None
