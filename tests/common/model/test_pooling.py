from __future__ import annotations

import json

import torch

from common.model.adapter import load_adapter, read_model_info, save_adapter
from common.model.loading import load_base_classifier
from common.model.lora import LoraSettings, apply_lora
from common.model.pooling import resolve_pooling


def test_auto_follows_the_sentence_transformers_pooling_config(tmp_path):
    assert resolve_pooling("auto", str(tmp_path)) == "cls"
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
    assert resolve_pooling("auto", str(tmp_path)) == "mean"
    assert resolve_pooling("cls", str(tmp_path)) == "cls"


def test_mean_pooling_is_the_masked_mean_of_token_states(tiny_ref, tiny_tokenizer):
    model = load_base_classifier(tiny_ref, ("n", "p"), pooling="mean").eval()
    assert model.config.fedtune_pooling == "mean"
    batch = tiny_tokenizer(["the app was great", "awful"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.bert(**batch)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = (out.last_hidden_state * mask).sum(1) / mask.sum(1)
    assert torch.allclose(out.pooler_output, expected, atol=1e-6)


def test_saved_adapter_records_pooling_and_is_reloaded_with_it(tiny_ref, tiny_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = apply_lora(load_base_classifier(tiny_ref, ("n", "p"), pooling="mean"), LoraSettings(r=4)).eval()
    save_adapter(model, tmp_path, base_model_name="tiny")
    info = read_model_info(tmp_path)
    assert info["pooling"] == "mean" and info["labels"] == ["n", "p"] and info["base_model"] == "tiny"
    stock = load_base_classifier(tiny_ref, ("n", "p"), pooling="cls")
    loaded = load_adapter(stock, tmp_path).eval()
    batch = tiny_tokenizer(["the app was great", "awful"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, loaded(**batch).logits, atol=1e-6)
