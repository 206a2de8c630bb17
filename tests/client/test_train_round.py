"""A site's round: refusal without weights, sigma fixed per run, site settings only from the node config."""

from __future__ import annotations

import pytest
from flwr.app import Context, Message, MessageType, RecordDict

from client.site import resolve_site
from client.train import train_round
from common.errors import ConfigError, ModelError
from common.federation import protocol as p
from common.federation.config import parse_run_config
from common.federation.rounds import Status
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import DatasetRef, PrivacyLedger
from tests.flower_helpers import make_sites


@pytest.fixture
def setup(tiny_model_dir, sample_jsonl, tmp_path):
    from flwr.supercore.task_identity import TaskIdentity

    from server.model import ServerModel

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    config = parse_run_config(
        {
            "model": str(tiny_model_dir),
            "labels": "negative,positive",
            "batch-size": 32,
            "max-length": 24,
            "target-epsilon": 5.0,
            "out-dir": str(tmp_path / "out"),
            "strategy": "ffa",
        }
    )
    site = make_sites(tmp_path, [sample_jsonl])[0]
    context = Context(
        run_id=1, node_id=1, node_config=site.to_node_config(), state=RecordDict(), run_config=config.to_run_config()
    )
    initial = ServerModel(config).initial_state()
    return config, site, context, initial


def request(initial, server_round=1, run_id="run-x", rounds=3):
    from flwr.app import ConfigRecord

    content = RecordDict(
        {
            p.ARRAYS: p.adapter_to_arrays(initial),
            p.CONFIG: ConfigRecord({p.SERVER_ROUND: server_round, p.RUN_ID: run_id, p.NUM_ROUNDS: rounds}),
        }
    )
    return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=1)


def test_trained_reply_carries_only_exchanged_tensors_and_spend(setup):
    config, site, context, initial = setup
    reply = train_round(request(initial), context)
    status = reply.content.config_records[p.STATUS]
    assert status[p.STATE] == Status.TRAINED and status[p.SITE_NAME] == site.site_name
    sent = set(reply.content.array_records[p.ARRAYS].keys())
    assert sent and not any(".lora_A." in k for k in sent)  # FFA: A never leaves the site
    metrics = reply.content.metric_records[p.METRICS]
    assert metrics[p.NUM_EXAMPLES] > 0 and 0 < metrics[p.EPSILON_SPENT] <= config.target_epsilon
    ledger = PrivacyLedger(site.ledger_path).snapshot()
    assert len(ledger.committed) == 1, "the spend must be committed before the reply is built"


def test_sigma_is_fixed_for_the_run_and_recomputed_identically_after_a_restart(setup):
    _config, _site, context, initial = setup
    first = train_round(request(initial, 1), context).content.metric_records[p.METRICS][p.NOISE_MULTIPLIER]
    second = train_round(request(initial, 2), context).content.metric_records[p.METRICS][p.NOISE_MULTIPLIER]
    fresh = Context(
        run_id=1, node_id=1, node_config=context.node_config, state=RecordDict(), run_config=context.run_config
    )
    third = train_round(request(initial, 3), fresh).content.metric_records[p.METRICS][p.NOISE_MULTIPLIER]
    assert first == second == third


def test_exhausted_site_refuses_without_weights(setup):
    _config, site, context, initial = setup
    from common.data.readers import read_labeled_file

    source = read_labeled_file(site.data_path)
    PrivacyLedger(site.ledger_path).reserve(
        dataset=DatasetRef(source.fingerprint, "earlier", len(source)),
        event=DpSgdEvent(noise_multiplier=0.5, sample_rate=0.5, steps=300, max_grad_norm=1.0),
        delta=1e-5,
        limit=None,
        run_id="earlier",
    )
    before = site.ledger_path.read_bytes()
    reply = train_round(request(initial), context)
    status = reply.content.config_records[p.STATUS]
    assert status[p.STATE] == Status.REFUSED and "already spent" in status[p.REASON]
    assert not reply.content.array_records
    assert reply.content.metric_records[p.METRICS][p.NUM_EXAMPLES] == 0
    assert site.ledger_path.read_bytes() == before


def test_a_dataset_trained_without_privacy_is_refused(setup):
    _config, site, context, initial = setup
    from common.data.readers import read_labeled_file

    source = read_labeled_file(site.data_path)
    dataset = DatasetRef(source.fingerprint, "baseline", len(source))
    PrivacyLedger(site.ledger_path).reserve(dataset=dataset, event=None, delta=1e-5, limit=None, run_id="baseline")
    before = site.ledger_path.read_bytes()
    reply = train_round(request(initial), context)
    status = reply.content.config_records[p.STATUS]
    assert status[p.STATE] == Status.REFUSED and "trained on without privacy" in status[p.REASON]
    assert not reply.content.array_records and site.ledger_path.read_bytes() == before


def test_a_bad_global_adapter_is_refused_before_training(setup):
    _config, site, context, initial = setup
    import torch

    poisoned = {**initial, next(iter(initial)): torch.full_like(initial[next(iter(initial))], float("nan"))}
    with pytest.raises(ModelError, match="NaN"):
        train_round(request(poisoned), context)
    assert not site.ledger_path.exists(), "nothing may be reserved for a round that cannot train"


def test_site_settings_come_only_from_the_node_config(setup):
    config, site, context, _initial = setup
    resolved = resolve_site(context.node_config, config)
    assert resolved.data_path == site.data_path and resolved.max_epsilon == site.max_epsilon
    from common.federation.config import parse_run_config

    with pytest.raises(ConfigError, match="'ledger-path': Extra inputs"):  # a server cannot smuggle site settings
        parse_run_config({**config.to_run_config(), "ledger-path": "/tmp/x"})
    with pytest.raises(ConfigError, match="no site settings"):
        resolve_site({}, config)
