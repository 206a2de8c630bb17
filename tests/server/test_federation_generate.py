"""A generate run end to end in process: the server loop, the strategies and real sites over a tiny causal LM.

Each site trains a tiny Llama's LoRA adapter with DP-SGD on its prompt/response pairs; the server aggregates,
evaluates on its own held-out pairs (loss, perplexity, ROUGE-L, BLEU, exact match) and writes an adapter that
``fedtune generate`` loads. Attacks: a server that sends a generate run to a classification site, and a generate run
with a classification-only setting, train nothing and spend nothing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from client.train import train_round
from common.errors import ConfigError
from common.federation.config import parse_run_config
from common.federation.rounds import Status
from common.privacy.ledger import PrivacyLedger
from server.causal_model import CausalServerModel
from server.federation import run_federation
from tests.causal_helpers import build_tiny_llama
from tests.client.test_train_round import assert_refused, request, site_context
from tests.flower_helpers import LocalGrid, make_sites


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def write_pairs(path: Path, count: int, seed: int) -> Path:
    """``count`` reverse-the-words pairs ("the w1 w2" -> "w2 w1"), every token in the tiny vocabulary."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        words = [f"w{rng.randrange(80)}" for _ in range(rng.randrange(2, 6))]
        rows.append({"prompt": "the " + " ".join(words), "response": " ".join(reversed(words))})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def generate_config(llama_dir: Path, out: Path, **overrides: object):
    values = {
        "model": str(llama_dir),
        "task": "generate",
        "strategy": "ffa",
        "num-rounds": 2,
        "min-sites": 2,
        "batch-size": 16,
        "local-epochs": 1,
        "max-length": 32,
        "eval-generations": 4,
        "max-new-tokens": 4,
        "out-dir": str(out),
        "seed": 1,
    }
    return parse_run_config({**values, **{k.replace("_", "-"): v for k, v in overrides.items()}})


def committed(site) -> list:
    """The site's committed training events (none when it has no ledger yet)."""
    return list(PrivacyLedger(site.ledger_path).snapshot().committed) if site.ledger_path.exists() else []


@pytest.mark.parametrize("strategy", ["ffa", "fedavg", "product"])
def test_a_generate_run_trains_evaluates_and_writes_a_generative_adapter(llama_dir, tmp_path, strategy):
    files = [write_pairs(tmp_path / f"site-{k}.jsonl", 48, seed=k) for k in range(2)]
    config = generate_config(
        llama_dir,
        tmp_path / "run",
        strategy=strategy,
        eval_data=str(write_pairs(tmp_path / "eval.jsonl", 12, seed=9)),
        num_rounds=2 if strategy == "ffa" else 1,
    )
    assert config.training.max_length == 32 and config.selection.metric == "loss"
    sites = make_sites(tmp_path, files, task="generate", prompt_column="prompt")
    result = run_federation(LocalGrid(config, sites), config)

    assert result.completed_rounds == config.num_rounds and not result.crashes
    for record in result.history[1:]:
        assert all(site.status is Status.TRAINED for site in record.sites), record.sites
        server = record.server_eval or {}
        assert {"loss", "perplexity", "rouge_l", "bleu", "exact_match", "generations"} <= set(server)
        assert server["generations"] == 4
        # Sites named every releasable metric; a generate run computes (and releases) the loss alone.
        assert set(record.federated_eval or {}) == {"loss"}
    assert result.selected is not None and result.selected.metric == "loss"
    info = json.loads((tmp_path / "run" / "adapter" / "fedtune_model.json").read_text())
    assert info["task"] == "generate" and info["template"] == "plain"
    for site in sites:  # one DP-SGD event per round, reserved and committed in each site's own ledger
        assert len(committed(site)) == config.num_rounds

    from common.inference.generate import generate_texts
    from common.model.adapter import load_causal_adapter
    from common.model.causal import ensure_pad_token, load_causal_lm
    from common.model.loading import load_tokenizer, resolve_base_model
    from common.training.device import resolve_device

    ref = resolve_base_model(str(llama_dir))
    model = load_causal_adapter(load_causal_lm(ref), tmp_path / "run" / "adapter")
    texts = generate_texts(
        model, ensure_pad_token(load_tokenizer(ref)), ["the w1 w2"], max_new_tokens=3, device=resolve_device("cpu")
    )
    assert len(texts) == 1


def test_a_classification_site_refuses_a_generate_run_before_spending(llama_dir, tmp_path, sample_jsonl):
    config = generate_config(llama_dir, tmp_path / "run", num_rounds=1, min_sites=1, max_site_weight=1)
    generate_site = make_sites(tmp_path, [write_pairs(tmp_path / "pairs.jsonl", 48, seed=1)], task="generate")[0]
    classify_site = make_sites(tmp_path, [sample_jsonl], site_name="labelled", ledger_path=tmp_path / "l.jsonl")[0]
    result = run_federation(LocalGrid(config, [generate_site, classify_site]), config)

    statuses = {site.site_name: (site.status, site.reason) for site in result.history[-1].sites}
    assert statuses[classify_site.site_name][0] is Status.REFUSED
    assert "task-differs" in statuses[classify_site.site_name][1]
    assert not committed(classify_site)


def test_classification_only_settings_are_refused_for_a_generate_run(llama_dir, tmp_path):
    with pytest.raises(ConfigError, match="class-weights balanced applies to classification"):
        generate_config(llama_dir, tmp_path, class_weights="balanced")
    with pytest.raises(ConfigError, match="select-metric accuracy is a classification metric"):
        generate_config(llama_dir, tmp_path, select_metric="accuracy")


def test_a_site_refuses_balanced_class_weights_in_a_generate_run_it_resolved_itself(llama_dir, tmp_path):
    """task auto (the model's config decides) cannot be checked when parsed: the site checks it, spending nothing."""
    from server.selection import check_selection

    config = generate_config(llama_dir, tmp_path / "run", task="auto", class_weights="balanced", select_metric="loss")
    assert config.model_task() == "generate"
    with pytest.raises(ConfigError, match="class-weights"):
        check_selection(config)  # the server refuses before any round

    site = make_sites(tmp_path, [write_pairs(tmp_path / "pairs.jsonl", 48, seed=1)], task="generate")[0]
    initial = CausalServerModel(config.model_copy(update={"eval_data": ""})).initial_state()
    reply = train_round(request(initial), site_context(site, config))
    assert_refused(reply, "bad-request")
    assert not committed(site)
