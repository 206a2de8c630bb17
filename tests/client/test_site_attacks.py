"""The attacker's probes against a site, each replayed against the real train round.

* The loss leak: "Each train reply carries train-loss, computed on raw training examples with no noise ... A server
  that sets batch-size to N and sends a crafted head recovers an exact count of one class (two datasets differing in
  one record gave 31 vs 30)."
* The round replay: "replaying a round number reproduces the noise bit for bit, so two updates subtract to a
  noise-free difference."
* Relabelling: "The server's label list must equal the site's own label set (names and order) or the site refuses";
  "four namings of the same 300 records gave four full spends (composed 4.96 against a limit of 3.0)".
* Rollback: a site refuses to train when the head the server witnessed is no longer in its ledger, and otherwise
  proves that its head extends it.
"""

from __future__ import annotations

import logging
import shutil

import pytest
import torch

from client.runtime import site_data, site_model
from client.train import round_seed, train_round
from common.data.sample import sample_dataset
from common.federation import protocol as p
from common.model.adapter import load_adapter_state
from common.privacy.chain import LedgerHead, verify_witnessed
from common.privacy.ledger import PrivacyLedger
from common.privacy.record_ids import key_path
from common.privacy.storage import head_path
from common.training.device import resolve_device
from common.training.evaluation import evaluate
from tests.client.test_release import assert_train_whitelist
from tests.client.test_train_round import assert_refused, initial_state, request, run_config, site_context
from tests.flower_helpers import make_sites
from tests.helpers import write_jsonl

N = 60


def write_site(path, texts, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_jsonl(path, [{"text": t, "label": y} for t, y in zip(texts, labels, strict=True)])


def crafted_head(initial, bias):
    """The server's probe: a classifier head with zero weights, so every logit is the chosen bias."""
    crafted = dict(initial)
    weight = next(k for k in crafted if k.endswith("classifier.weight"))
    crafted[weight] = torch.zeros_like(crafted[weight])
    crafted[weight.replace("weight", "bias")] = torch.tensor(bias, dtype=crafted[weight].dtype)
    return crafted


def test_the_loss_leak_attack_finds_nothing_data_dependent_in_the_reply(tiny_model_dir, tmp_path):
    sample = sample_dataset(N + 1, seed=5)
    base = ["negative" if k % 3 else "positive" for k in range(N - 1)]
    # Two datasets differing in one record: a positive record in A, another text labelled negative in B.
    a = write_site(tmp_path / "a" / "train.jsonl", [*sample.texts[: N - 1], sample.texts[N - 1]], [*base, "positive"])
    b = write_site(tmp_path / "b" / "train.jsonl", [*sample.texts[: N - 1], sample.texts[N]], [*base, "negative"])
    config = run_config(tiny_model_dir, tmp_path, **{"batch-size": N, "strategy": "fedavg"})  # q = 1: every record
    head = crafted_head(initial_state(config), [0.0, 5.0])  # a negative example's loss is ~5, a positive's ~0
    sites = make_sites(tmp_path, [a, b], release_metrics=())

    # The probe is real: under this head, a loss over the training set counts the negatives exactly.
    model = site_model(config)
    load_adapter_state(model.model, head)
    losses = [
        evaluate(model.model, site_data(s, config, model.tokenizer).train, batch_size=N, device=resolve_device("cpu"))
        for s in sites
    ]
    assert (losses[1].loss - losses[0].loss) * N == pytest.approx(5.0, abs=0.05)

    replies = [train_round(request(head, rounds=1), site_context(s, config)) for s in sites]
    for reply in replies:
        assert_train_whitelist(reply)  # no loss, no realised batch sizes, no timing, no site name
    first, second = (r.content for r in replies)
    # Everything but the DP tensors and the ledger's random ids is identical: nothing to read the count from.
    assert dict(first.metric_records[p.METRICS]) == dict(second.metric_records[p.METRICS])
    assert dict(first.config_records[p.STATUS]) == dict(second.config_records[p.STATUS])
    ledgers = [c.config_records[p.LEDGER] for c in (first, second)]
    assert ledgers[0][p.LEDGER_SEQ] == ledgers[1][p.LEDGER_SEQ] and ledgers[0][p.LEDGER_PROOF] == []
    assert ledgers[1][p.LEDGER_PROOF] == []
    assert set(first.array_records[p.ARRAYS]) == set(second.array_records[p.ARRAYS])


def test_replaying_a_round_number_does_not_replay_the_noise(tiny_model_dir, sample_jsonl, tmp_path):
    config = run_config(tiny_model_dir, tmp_path)
    site = make_sites(tmp_path, [sample_jsonl], release_metrics=())[0]
    assert site.seed is not None  # a seeded (simulation) site: the old seed was hash(site seed, server-round)
    context, initial = site_context(site, config), initial_state(config)
    updates = []
    for _ in range(2):  # the server sends round 1, with the same adapter, twice
        reply = train_round(request(initial, server_round=1), context)
        updates.append(p.arrays_to_adapter(reply.content.array_records[p.ARRAYS], source="test"))
    assert set(updates[0]) == set(updates[1])
    assert all(not torch.equal(updates[0][k], updates[1][k]) for k in updates[0]), "the noise was replayed"
    reserves = PrivacyLedger(site.ledger_path).snapshot().reservations()
    assert len(reserves) == 2 and reserves[0].seq != reserves[1].seq
    # The seed is the site's: its seed and the event's place in its own ledger, and nothing else.
    assert round_seed(site, reserves[0].seq) == round_seed(site, reserves[0].seq) != round_seed(site, reserves[1].seq)
    assert round_seed(site.model_copy(update={"seed": None}), reserves[0].seq) is None


def test_a_seeded_simulation_reproduces_its_noise_from_a_fresh_ledger(tiny_model_dir, sample_jsonl, tmp_path):
    config = run_config(tiny_model_dir, tmp_path)
    updates = []
    for attempt in ("a", "b"):
        site = make_sites(tmp_path / attempt, [sample_jsonl], release_metrics=())[0]
        reply = train_round(request(initial_state(config), server_round=1), site_context(site, config))
        updates.append(p.arrays_to_adapter(reply.content.array_records[p.ARRAYS], source="test"))
    assert all(torch.equal(updates[0][k], updates[1][k]) for k in updates[0])


RELABELLINGS = {
    "reordered": ("positive,negative", None),
    "renamed": ("bad,good", None),
    "superset": ("negative,positive,neutral", None),
    "subset": ("negative,positive", ("negative", "positive", "neutral")),
}


@pytest.mark.parametrize(("server_labels", "site_labels"), RELABELLINGS.values(), ids=RELABELLINGS.keys())
def test_a_server_relabelling_the_sites_records_is_refused_before_anything_is_spent(
    tiny_model_dir, sample_jsonl, tmp_path, caplog, server_labels, site_labels
):
    config = run_config(tiny_model_dir, tmp_path, labels=server_labels)
    site = make_sites(tmp_path, [sample_jsonl], labels=site_labels)[0]
    adapter = initial_state(run_config(tiny_model_dir, tmp_path))  # the site refuses before it loads any model
    with caplog.at_level(logging.WARNING, logger="client.train"):
        reply = train_round(request(adapter), site_context(site, config))
    assert_refused(reply, "labels-differ")
    assert not site.ledger_path.exists(), "nothing may be reserved under another label set"
    own = list(site_labels or ("negative", "positive"))
    assert str(list(config.labels)) in caplog.text and str(own) in caplog.text  # the site's log names both


def test_four_namings_of_the_same_records_compose_within_the_limit(tiny_model_dir, tmp_path):
    sample = sample_dataset(300, seed=9)
    namings = [("negative", "positive"), ("neg", "pos"), ("bad", "good"), ("0", "1")]
    spent, per_run, refused = [], [], []
    for k, names in enumerate(namings):  # the same 300 records, relabelled by the site each time to suit a server
        path = write_site(tmp_path / f"naming-{k}" / "train.jsonl", sample.texts, [names[y] for y in sample.labels])
        config = run_config(tiny_model_dir, tmp_path, labels=",".join(names), **{"target-epsilon": 2.0})
        site = make_sites(tmp_path, [path], release_metrics=(), max_epsilon=3.0, labels=names)[0]
        site = site.model_copy(update={"ledger_path": tmp_path / "ledger.jsonl"})  # the site's one ledger
        reply = train_round(request(initial_state(config), run_id=f"run-{k}", rounds=1), site_context(site, config))
        if p.METRICS in reply.content.metric_records:
            spent.append(reply.content.metric_records[p.METRICS][p.EPSILON_SPENT])
            per_run.append(reply.content.metric_records[p.METRICS][p.EPSILON_ROUND])
        else:
            refused.append(reply.content.config_records[p.STATUS][p.REASON])
    assert len(spent) >= 2 and spent == sorted(spent) and spent[1] > per_run[1], "a new naming reset the spend"
    assert sum(per_run) > 3.0 >= max(spent), "the runs would pass the limit if each naming were a new dataset"
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    assert ledger.status(ledger.dataset(sample.texts, dataset_id="all"), delta=1e-5, limit=3.0).spent <= 3.0
    assert set(refused) <= {"budget-exhausted", "bad-parameters"}


def witness(head: LedgerHead) -> dict[str, object]:
    """The witnessed-head keys a server adds to its request."""
    return {p.WITNESSED_LEDGER_ID: head.ledger_id, p.WITNESSED_SEQ: head.seq, p.WITNESSED_HASH: head.hash}


def released_head(reply) -> tuple[LedgerHead, list[str]]:
    record = reply.content.config_records[p.LEDGER]
    head = LedgerHead(record[p.LEDGER_ID], record[p.LEDGER_SEQ], record[p.LEDGER_HEAD])
    return head, list(record[p.LEDGER_PROOF])


def copy_ledger(source, target):
    for make in (lambda x: x, head_path, key_path):
        shutil.copyfile(make(source), make(target))


def test_a_site_proves_its_head_and_trains_nothing_on_a_rolled_back_ledger(tiny_model_dir, sample_jsonl, tmp_path):
    config = run_config(tiny_model_dir, tmp_path)
    site = make_sites(tmp_path, [sample_jsonl], release_metrics=())[0]
    context, initial = site_context(site, config), initial_state(config)
    first, proof = released_head(train_round(request(initial, 1), context))
    assert proof == [] and first == PrivacyLedger(site.ledger_path).head()
    copy_ledger(site.ledger_path, tmp_path / "backup.jsonl")  # an insider keeps a copy after round 1

    second, proof = released_head(train_round(request(initial, 2, **witness(first)), context))
    verify_witnessed(first, second, proof)  # the server can check that the head only grew
    assert second.seq > first.seq

    copy_ledger(tmp_path / "backup.jsonl", site.ledger_path)  # ... and restores it: round 2's spend is gone
    before = site.ledger_path.read_bytes()
    assert_refused(train_round(request(initial, 3, **witness(second)), context), "ledger-witness")
    assert site.ledger_path.read_bytes() == before, "nothing reserved on a rolled-back ledger"
    other = LedgerHead("another-ledger", first.seq, first.hash)
    assert_refused(train_round(request(initial, 3, **witness(other)), context), "ledger-witness")


def test_a_site_declares_its_label_set_when_it_starts(sample_jsonl, tmp_path, capsys):
    from cli.app import main

    base = ["client", "start", "--superlink", "127.0.0.1:1", "--data", str(sample_jsonl), "--insecure"]
    with pytest.raises(SystemExit) as info:  # the file's labels are not the declared set: refused before connecting
        main([*base, "--ledger", str(tmp_path / "l.jsonl"), "--labels", "bad,good"])
    assert info.value.code == 65 and "outside the label set ['bad', 'good']" in capsys.readouterr().err
