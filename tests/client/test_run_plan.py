"""A site's per-run plan: the recipe from public facts, balanced class weights from a DP histogram released once per
run BEFORE training, and the data's coverage (strict: refused before anything is spent)."""

from __future__ import annotations

import json

from client.run_plan import RUN_PLAN_STATE, RunPlan
from client.train import train_round
from common.federation import protocol as p
from common.federation.rounds import Status
from common.privacy.accountant import get_accountant
from common.privacy.ledger import PrivacyLedger
from common.privacy.records import LABEL_HISTOGRAM
from tests.client.test_train_round import initial_state, request, run_config, site_context
from tests.flower_helpers import make_sites
from tests.helpers import write_jsonl


def status(reply):
    return reply.content.config_records[p.STATUS][p.STATE]


def test_balanced_weights_release_a_histogram_once_per_run_before_training(tiny_model_dir, sample_jsonl, tmp_path):
    config = run_config(tiny_model_dir, tmp_path, **{"class-weights": "balanced"})
    site = make_sites(tmp_path, [sample_jsonl])[0]
    context, initial = site_context(site, config), initial_state(config)
    for server_round in (1, 2):
        assert status(train_round(request(initial, server_round=server_round), context)) == Status.TRAINED.value
    snapshot = PrivacyLedger(site.ledger_path).snapshot()
    reserves = snapshot.reservations()
    histograms = [r for r in reserves if r.purpose == LABEL_HISTOGRAM]
    training = [r for r in reserves if r.purpose != LABEL_HISTOGRAM]
    assert len(histograms) == 1 and len(training) == 2  # released once for the run, not per round
    assert histograms[0].seq < min(r.seq for r in training) and histograms[0].event_id in snapshot.committed
    events = [r.dp_event() for r in reserves]
    ledger = PrivacyLedger(site.ledger_path)
    texts = [json.loads(line)["text"] for line in sample_jsonl.read_text().splitlines() if line.strip()]
    dataset = ledger.dataset(texts, dataset_id="whole file")  # its most exposed records are the trained ones
    composed = get_accountant("prv").epsilon([e for e in events if e is not None], delta=site.delta)
    assert ledger.spent(dataset, delta=site.delta) >= composed * 0.999  # the histogram is in the site's total
    plan = RunPlan.from_json(str(context.state.config_records[RUN_PLAN_STATE]["run-x"]))
    assert plan.class_weights is not None and len(plan.class_weights) == 2
    assert abs(sum(plan.class_weights) / 2 - 1.0) < 1e-9  # normalised to mean 1


def test_explicit_weights_of_the_wrong_length_are_a_bad_request(tiny_model_dir, sample_jsonl, tmp_path):
    config = run_config(tiny_model_dir, tmp_path, **{"class-weights": "1,2,3"})
    site = make_sites(tmp_path, [sample_jsonl])[0]
    reply = train_round(request(initial_state(config)), site_context(site, config))
    assert status(reply) == Status.REFUSED.value
    assert not site.ledger_path.exists() or not PrivacyLedger(site.ledger_path).snapshot().reservations()


def test_strict_data_refuses_text_the_tokenizer_does_not_know_before_spending(tiny_model_dir, tmp_path):
    rows = [{"text": "数据隐私保护" * 3 + str(i), "label": ["negative", "positive"][i % 2]} for i in range(120)]
    data = write_jsonl(tmp_path / "zh.jsonl", rows)
    site = make_sites(tmp_path, [data])[0]
    strict = run_config(tiny_model_dir, tmp_path, **{"strict-data": True})
    reply = train_round(request(initial_state(strict)), site_context(site, strict))
    assert status(reply) == Status.REFUSED.value
    assert reply.content.config_records[p.STATUS].get(p.REASON) == "bad-request"
    assert not site.ledger_path.exists() or not PrivacyLedger(site.ledger_path).snapshot().reservations()
    lenient = run_config(tiny_model_dir, tmp_path / "b")
    assert status(train_round(request(initial_state(lenient)), site_context(site, lenient))) == "trained"
