"""The server loop with real ClientApp rounds, in process (LocalGrid): rejections, budgets, checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from common.data.partition import PartitionSpec, partition_dataset
from common.data.readers import read_labeled_file
from common.data.sample import sample_dataset
from common.errors import FederationError
from common.federation import protocol as p
from common.federation.config import FederationConfig, parse_run_config
from common.federation.rounds import Status
from common.privacy.accountant import get_accountant
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import PrivacyLedger
from server.checkpoint import load_checkpoint
from server.federation import CHECKPOINT_DIR, run_federation
from server.model import ServerModel
from server.round_log import RoundLog
from server.strategies.aggregation import weighted_mean
from tests.flower_helpers import LocalGrid, make_sites, replace_arrays
from tests.helpers import write_jsonl
from tests.server.federation_helpers import exchanged_keys, federate, final_adapter, run_config, stand_ins


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


def whole_file(ledger, path, dataset_id):
    """Every record of a site's data file, as the site's ledger identifies them (what another run could spend on)."""
    return ledger.dataset(read_labeled_file(path).texts, dataset_id=dataset_id)


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


@pytest.mark.parametrize("case", list(TAMPERS))
def test_a_rejected_update_leaves_the_global_as_if_it_never_came(tiny_model_dir, site_files, tmp_path, case):
    # Sites seed their noise from their own fresh entropy, so two runs never train alike: the global is checked
    # against the honest replies of this very run, combined as the strategy combines them.
    honest: dict[int, tuple[dict, float]] = {}

    def tampered(node, reply):
        if node == 3:
            return replace_arrays(reply, TAMPERS[case])
        tensors = p.arrays_to_adapter(reply.content.array_records[p.ARRAYS], source="test")
        honest[node] = (tensors, float(reply.content.metric_records[p.METRICS][p.NUM_EXAMPLES]))
        return reply

    files, eval_file = site_files
    config = config_for(tiny_model_dir, tmp_path / "run", eval_file, num_rounds=1, federated_evaluation=False)
    initial = ServerModel(config).initial_state()
    result = run_federation(LocalGrid(config, make_sites(tmp_path, files), tamper=tampered), config)
    statuses = {s.node_id: (s.status, s.reason) for s in result.history[-1].sites}
    assert statuses[3][0] is Status.REJECTED, statuses[3]
    assert "node 3" in statuses[3][1]
    assert statuses[1][0] is statuses[2][0] is Status.TRAINED
    updates, weights = zip(*(honest[node] for node in (1, 2)), strict=True)
    expected = {
        key: weighted_mean([u[key].to(initial[key].dtype) for u in updates], weights) if key in updates[0] else value
        for key, value in initial.items()
    }
    assert torch.equal(flat(load_checkpoint(tmp_path / "run" / CHECKPOINT_DIR).adapter), flat(expected))


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
            ledger = PrivacyLedger(sites[1].ledger_path)
            ledger.reserve(
                dataset=whole_file(ledger, sites[1].data_path, "other"),
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
    assert by_round[2]["site-1"].status is Status.REFUSED and by_round[2]["site-1"].reason == "budget-exhausted"
    assert "site-1" not in by_round[3]  # never sampled again
    assert {s.status for s in by_round[3].values()} == {Status.TRAINED}
    # The refused round reserved nothing: the ledger holds this run's round 1 and the other run's spend, and the
    # dataset's spend is exactly their composition.
    ledger = PrivacyLedger(sites[1].ledger_path)
    reservations = ledger.snapshot().reservations()
    assert [(r.run_id == "other-federation", r.round) for r in reservations] == [(False, 1), (True, 0)]
    events = [r.dp_event() for r in reservations]
    spent = ledger.spent(whole_file(ledger, sites[1].data_path, "other"), delta=1e-5)  # the most exposed record
    assert spent == pytest.approx(get_accountant("prv").epsilon(events, delta=1e-5))


def test_run_ends_cleanly_when_too_few_sites_have_budget(tiny_model_dir, site_files, tmp_path):
    files, eval_file = site_files
    config = config_for(tiny_model_dir, tmp_path / "run", eval_file, num_rounds=2, federated_evaluation=False)
    sites = make_sites(tmp_path, files)
    for site in sites[:2]:  # two sites already spent their whole limit in earlier runs
        ledger = PrivacyLedger(site.ledger_path)
        ledger.reserve(
            dataset=whole_file(ledger, site.data_path, "earlier"),
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


def test_checkpoint_resume_gives_the_same_final_adapter(tiny_model_dir, tmp_path):
    # Stand-in sites: real ones draw fresh noise every round, so only deterministic sites show the server's part
    # (adapter, sampling, witnesses and each site's N restored) is exact.
    config = run_config(tiny_model_dir, tmp_path / "straight", num_rounds=3, sites_per_round=2)
    keys = exchanged_keys(config)
    federate(config, stand_ins([1, 2, 3], keys))
    straight = final_adapter(config)

    resumed_config = run_config(tiny_model_dir, tmp_path / "resumed", num_rounds=3, sites_per_round=2)
    sites = stand_ins([1, 2, 3], keys)

    class ServerCrash(Exception):
        pass

    def crash_in_round_two(node, reply):
        if load_checkpoint(tmp_path / "resumed" / CHECKPOINT_DIR) is not None:
            raise ServerCrash
        return reply

    with pytest.raises(ServerCrash):
        federate(resumed_config, sites, tamper=crash_in_round_two)
    assert load_checkpoint(tmp_path / "resumed" / CHECKPOINT_DIR).completed_rounds == 1
    # Restart: a new server process, the same sites.
    result = federate(resumed_config, sites)
    assert result.completed_rounds == 3
    assert all(s.status is Status.TRAINED for r in result.history for s in r.sites)
    assert torch.equal(flat(final_adapter(resumed_config)), flat(straight))
