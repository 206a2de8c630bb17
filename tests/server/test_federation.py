"""The server loop with real ClientApp rounds, in process (LocalGrid): rejections, budgets, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from common.data.partition import PartitionSpec, partition_dataset
from common.data.sample import sample_dataset
from common.errors import FederationError
from common.federation.config import FederationConfig, parse_run_config
from common.federation.rounds import Status
from common.privacy.accountant import get_accountant
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import DatasetRef, PrivacyLedger
from server.checkpoint import load_checkpoint
from server.federation import CHECKPOINT_DIR, run_federation
from server.round_log import RoundLog
from tests.flower_helpers import LocalGrid, make_sites, replace_arrays
from tests.helpers import write_jsonl


@pytest.fixture
def site_files(tmp_path):
    data = sample_dataset(720, seed=9)
    files = []
    for k, part in enumerate(partition_dataset(data, sites=3, spec=PartitionSpec.parse("iid"), seed=0)):
        rows = [{"text": t, "label": part.label_names[y]} for t, y in zip(part.texts, part.labels, strict=True)]
        files.append(write_jsonl(tmp_path / f"site{k}.jsonl", rows))
    evaluation = sample_dataset(120, seed=10)
    eval_rows = [
        {"text": t, "label": evaluation.label_names[y]}
        for t, y in zip(evaluation.texts, evaluation.labels, strict=True)
    ]
    return files, write_jsonl(tmp_path / "eval.jsonl", eval_rows)


def config_for(tiny_model_dir, out, eval_file, **overrides) -> FederationConfig:
    values = {
        "model": str(tiny_model_dir),
        "labels": ("negative", "positive"),
        "strategy": "fedavg",
        "num_rounds": 2,
        "batch_size": 32,
        "max_length": 24,
        "min_sites": 2,
        "target_epsilon": 6.0,
        "eval_data": str(eval_file),
        "out_dir": str(out),
        "seed": 3,
        "learning_rate": 0.01,
    }
    return parse_run_config({key.replace("_", "-"): value for key, value in {**values, **overrides}.items()})


def flat(state):
    return torch.cat([state[k].flatten() for k in sorted(state)])


def test_federation_trains_reports_and_writes_everything(tiny_model_dir, site_files, tmp_path):
    files, eval_file = site_files
    config = config_for(tiny_model_dir, tmp_path / "run", eval_file, strategy="ffa")
    sites = make_sites(tmp_path, files)
    result = run_federation(LocalGrid(config, sites), config)
    assert result.ok and result.completed_rounds == 2 and result.stop_reason is None
    rounds = [r for r in result.history if r.round > 0]
    assert [len(r.with_status(Status.TRAINED)) for r in rounds] == [3, 3]
    assert result.history[0].round == 0 and 0.0 <= result.history[0].server_eval["accuracy"] <= 1.0
    assert 0.0 <= rounds[-1].federated_eval["accuracy"] <= 1.0
    assert RoundLog(tmp_path / "run").read() == rounds  # the round log holds exactly the finished rounds
    report = json.loads((tmp_path / "run" / "privacy_report.json").read_text())
    for site in sites:
        rows = report["sites"][site.site_name]
        assert [r["round"] for r in rows] == [1, 2]
        assert rows[0]["epsilon_spent"] < rows[1]["epsilon_spent"] <= config.target_epsilon
        ledger = PrivacyLedger(site.ledger_path).snapshot()
        assert len(ledger.reservations()) == 2 and len(ledger.committed) == 2
        assert report["final_epsilon_spent"][site.site_name] == pytest.approx(rows[1]["epsilon_spent"])
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "run" / "progress.png").read_bytes()[:4] == b"\x89PNG"
    # FFA: only B and the head travelled, and A never changed.
    uploaded = {s.upload_bytes for r in rounds for s in r.sites}
    assert len(uploaded) == 1
    final = load_checkpoint(tmp_path / "run" / CHECKPOINT_DIR).adapter
    from server.model import ServerModel

    initial = ServerModel(config).initial_state()
    assert all(torch.equal(final[k], initial[k]) for k in final if ".lora_A." in k)
    assert any(not torch.equal(final[k], initial[k]) for k in final if ".lora_B." in k)


TAMPERS = {
    "wrong key": lambda t: {**t, "base_model.model.bert.embeddings.word_embeddings.weight": torch.zeros(3)},
    "missing key": lambda t: dict(list(t.items())[1:]),
    "shape": lambda t: {k: (v[:1] if i == 0 else v) for i, (k, v) in enumerate(t.items())},
    "dtype": lambda t: {k: v.double() for k, v in t.items()},
    "nan": lambda t: {k: (torch.full_like(v, float("nan")) if i == 0 else v) for i, (k, v) in enumerate(t.items())},
    "inf": lambda t: {k: (torch.full_like(v, float("inf")) if i == 0 else v) for i, (k, v) in enumerate(t.items())},
    "huge norm": lambda t: {k: v * 1e6 + 1e3 for k, v in t.items()},
}


def _one_round(tiny_model_dir, site_files, tmp_path, name, tamper):
    files, eval_file = site_files
    config = config_for(tiny_model_dir, tmp_path / name, eval_file, num_rounds=1, federated_evaluation=False)
    grid = LocalGrid(config, make_sites(tmp_path / name, files), tamper=tamper)
    (tmp_path / name).mkdir(exist_ok=True)
    result = run_federation(grid, config)
    return result, load_checkpoint(tmp_path / name / CHECKPOINT_DIR).adapter


@pytest.mark.parametrize("case", list(TAMPERS))
def test_a_rejected_update_leaves_the_global_as_if_it_never_came(tiny_model_dir, site_files, tmp_path, case):
    def tampered(node, reply):
        return replace_arrays(reply, TAMPERS[case]) if node == 3 else reply

    def dropped(node, reply):
        from flwr.app import Error, Message

        from tests.flower_helpers import _original

        return Message(Error(code=0, reason="never came"), reply_to=_original(reply)) if node == 3 else reply

    result, with_bad = _one_round(tiny_model_dir, site_files, tmp_path, "bad", tampered)
    _, without = _one_round(tiny_model_dir, site_files, tmp_path, "none", dropped)
    statuses = {s.node_id: (s.status, s.reason) for s in result.history[-1].sites}
    assert statuses[3][0] is Status.REJECTED, statuses[3]
    assert "node 3" in statuses[3][1]
    assert statuses[1][0] is statuses[2][0] is Status.TRAINED
    assert torch.equal(flat(with_bad), flat(without))


def test_site_out_of_budget_is_dropped_and_the_run_completes(tiny_model_dir, site_files, tmp_path):
    files, eval_file = site_files
    config = config_for(tiny_model_dir, tmp_path / "run", eval_file, num_rounds=3, federated_evaluation=False)
    sites = make_sites(tmp_path, files)
    grid = LocalGrid(config, sites)
    spent_elsewhere = {"done": False}

    def another_run_spends(node, reply):
        # After round 1, another federation spends most of site-1's budget on the same data.
        if node == 2 and not spent_elsewhere["done"]:
            spent_elsewhere["done"] = True
            snapshot = PrivacyLedger(sites[1].ledger_path).snapshot()
            first = snapshot.reservations()[0]
            PrivacyLedger(sites[1].ledger_path).reserve(
                dataset=DatasetRef(first.dataset_fingerprint, first.dataset_id, 10_000),
                event=DpSgdEvent(noise_multiplier=0.8, sample_rate=0.2, steps=30, max_grad_norm=1.0),
                delta=1e-5,
                limit=None,
                run_id="other-federation",
            )
        return reply

    grid.tamper = another_run_spends
    result = run_federation(grid, config)
    assert result.ok and result.completed_rounds == 3
    by_round = {r.round: {s.site_name: s for s in r.sites} for r in result.history if r.round > 0}
    assert by_round[2]["site-1"].status is Status.REFUSED and "over the limit" in by_round[2]["site-1"].reason
    assert "site-1" not in by_round[3]  # never sampled again
    assert {s.status for s in by_round[3].values()} == {Status.TRAINED}
    # The refused round reserved nothing: the ledger holds this run's round 1 and the other run's spend, and the
    # dataset's spend is exactly their composition.
    reservations = PrivacyLedger(sites[1].ledger_path).snapshot().reservations()
    assert [(r.run_id == "other-federation", r.round) for r in reservations] == [(False, 1), (True, 0)]
    events = [r.dp_event() for r in reservations]
    spent = PrivacyLedger(sites[1].ledger_path).spent(reservations[0].dataset_fingerprint, delta=1e-5)
    assert spent == pytest.approx(get_accountant("prv").epsilon(events, delta=1e-5))


def test_run_ends_cleanly_when_too_few_sites_have_budget(tiny_model_dir, site_files, tmp_path):
    files, eval_file = site_files
    config = config_for(tiny_model_dir, tmp_path / "run", eval_file, num_rounds=2, federated_evaluation=False)
    sites = make_sites(tmp_path, files)
    for site in sites[:2]:  # two sites already spent their whole limit in earlier runs
        source = __import__("common.data.readers", fromlist=["read_labeled_file"]).read_labeled_file(site.data_path)
        PrivacyLedger(site.ledger_path).reserve(
            dataset=DatasetRef(source.fingerprint, "earlier", len(source)),
            event=DpSgdEvent(noise_multiplier=0.5, sample_rate=0.5, steps=200, max_grad_norm=1.0),
            delta=1e-5,
            limit=None,
            run_id="earlier",
        )
    result = run_federation(LocalGrid(config, sites), config)
    assert result.ok
    assert result.stop_reason is not None and "still have budget" in result.stop_reason
    assert result.completed_rounds == 0
    assert len(result.history[-1].with_status(Status.REFUSED)) == 2 and not result.history[-1].aggregated


def test_too_few_valid_updates_is_a_clear_error(tiny_model_dir, site_files, tmp_path):
    files, eval_file = site_files
    config = config_for(tiny_model_dir, tmp_path / "run", eval_file, num_rounds=1, federated_evaluation=False)

    def corrupt_two(node, reply):
        return replace_arrays(reply, TAMPERS["nan"]) if node in (1, 2) else reply

    with pytest.raises(FederationError, match=r"round 1: only 1 valid update\(s\), at least 2 needed"):
        run_federation(LocalGrid(config, make_sites(tmp_path, files), tamper=corrupt_two), config)


def test_checkpoint_resume_gives_the_same_final_adapter(tiny_model_dir, site_files, tmp_path):
    files, eval_file = site_files

    straight_config = config_for(tiny_model_dir, tmp_path / "straight", eval_file, federated_evaluation=False)
    run_federation(LocalGrid(straight_config, make_sites(tmp_path / "a", files)), straight_config)
    straight = load_checkpoint(tmp_path / "straight" / CHECKPOINT_DIR).adapter

    config = config_for(tiny_model_dir, tmp_path / "resumed", eval_file, federated_evaluation=False)
    sites = make_sites(tmp_path / "b", files)

    class ServerCrash(Exception):
        pass

    def crash_in_round_two(node, reply):
        if load_checkpoint(tmp_path / "resumed" / CHECKPOINT_DIR) is not None:
            raise ServerCrash
        return reply

    with pytest.raises(ServerCrash):
        run_federation(LocalGrid(config, sites, tamper=crash_in_round_two), config)
    assert load_checkpoint(tmp_path / "resumed" / CHECKPOINT_DIR).completed_rounds == 1
    # Restart: new server, new SuperNode processes (their Context state is gone), same ledgers.
    result = run_federation(LocalGrid(config, sites), config)
    assert result.completed_rounds == 2
    resumed = load_checkpoint(tmp_path / "resumed" / CHECKPOINT_DIR).adapter
    assert torch.allclose(flat(resumed), flat(straight), atol=1e-6)
