"""Federated evaluation at a site: the site's opt-in decides what leaves, and whether any data is held out."""

from __future__ import annotations

import pytest
import torch

from client.evaluate import evaluate_round
from client.runtime import site_data, site_model
from common.federation import protocol as p
from common.federation.rounds import Status
from common.federation.site import EVALUATE_ALL, parse_site_settings
from tests.client.test_release import evaluate_request
from tests.client.test_train_round import assert_refused, initial_state, run_config, site_context
from tests.flower_helpers import make_sites


def test_a_split_is_held_out_only_when_the_site_releases_metrics(federation):
    config, _initial, data, tmp_path = federation
    tokenizer = site_model(config).tokenizer
    silent = make_sites(tmp_path, [data], release_metrics=())[0]
    releasing = make_sites(tmp_path, [data])[0]
    assert site_data(silent, config, tokenizer).eval is None and len(site_data(silent, config, tokenizer).train) == 400
    held = site_data(releasing, config, tokenizer)
    assert held.eval is not None and len(held.train) + len(held.eval) == 400 and len(held.eval) == 80


def test_the_older_evaluate_key_still_releases_all_three_metrics(federation):
    config, initial, data, tmp_path = federation
    flat = {**make_sites(tmp_path, [data], release_metrics=())[0].to_node_config(), "evaluate": True}
    site = parse_site_settings(flat)
    assert site.release_metrics == EVALUATE_ALL and site.evaluate
    reply = evaluate_round(evaluate_request(initial), site_context(site, config))
    assert set(reply.content.metric_records[p.METRICS]) == {p.NUM_EXAMPLES, *EVALUATE_ALL}


def test_a_site_evaluates_nothing_under_labels_that_are_not_its_own(federation):
    config, _initial, data, tmp_path = federation
    swapped = run_config(config.model, tmp_path, labels="positive,negative")
    site = make_sites(tmp_path, [data])[0]
    assert_refused(
        evaluate_round(evaluate_request(initial_state(swapped)), site_context(site, swapped)), "labels-differ"
    )


def test_a_bad_global_adapter_is_refused_not_evaluated(federation):
    config, initial, data, tmp_path = federation
    site = make_sites(tmp_path, [data])[0]
    first = next(iter(initial))
    poisoned = {**initial, first: torch.full_like(initial[first], float("inf"))}
    assert_refused(evaluate_round(evaluate_request(poisoned), site_context(site, config)), "bad-request")
    bare = evaluate_request(initial)
    del bare.content[p.ARRAYS]
    assert_refused(evaluate_round(bare, site_context(site, config)), "bad-request")


def test_an_evaluating_site_reports_trained_with_its_metrics(federation):
    config, initial, data, tmp_path = federation
    site = make_sites(tmp_path, [data], release_metrics=("loss", "accuracy"))[0]
    reply = evaluate_round(evaluate_request(initial), site_context(site, config))
    assert reply.content.config_records[p.STATUS][p.STATE] == Status.TRAINED.value
    metrics = reply.content.metric_records[p.METRICS]
    assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--release-metrics", "accuracy,roc-auc"], "distinct names from"),
        (["--evaluate", "--release-metrics", "loss"], "give release-metrics only"),
    ],
)
def test_client_start_refuses_metrics_it_cannot_release(sample_jsonl, tmp_path, capsys, options, message):
    from cli.app import main

    base = ["client", "start", "--superlink", "127.0.0.1:1", "--data", str(sample_jsonl), "--insecure"]
    with pytest.raises(SystemExit) as info:
        main([*base, "--ledger", str(tmp_path / "l.jsonl"), *options])
    assert info.value.code == 2 and message in capsys.readouterr().err
