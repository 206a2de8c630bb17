"""A site's round: refusal without weights, sigma fixed per run, site settings only from the node config."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from client.site import resolve_site
from client.train import train_round
from common.data.readers import read_labeled_file
from common.errors import ConfigError
from common.federation import protocol as p
from common.federation.config import parse_run_config
from common.federation.rounds import Status
from common.privacy.events import DpSgdEvent
from common.privacy.ledger import PrivacyLedger
from common.training.recipe import DP_CLIP
from tests.flower_helpers import make_sites


def run_config(tiny_model_dir, tmp_path, **overrides):
    """A small federation over the tiny model (the server's run config)."""
    return parse_run_config(
        {
            "model": str(tiny_model_dir),
            "labels": "negative,positive",
            "batch-size": 32,
            "max-length": 24,
            "target-epsilon": 5.0,
            "out-dir": str(tmp_path / "out"),
            "strategy": "ffa",
            **overrides,
        }
    )


def site_context(site, config):
    """The Context a SuperNode holds for ``site`` (state persists across its rounds)."""
    return Context(
        run_id=1, node_id=1, node_config=site.to_node_config(), state=RecordDict(), run_config=config.to_run_config()
    )


def initial_state(config):
    from server.model import ServerModel

    return ServerModel(config).initial_state()


@pytest.fixture
def setup(tiny_model_dir, sample_jsonl, tmp_path):
    config = run_config(tiny_model_dir, tmp_path)
    site = make_sites(tmp_path, [sample_jsonl])[0]
    return config, site, site_context(site, config), initial_state(config)


def request(initial, server_round=1, run_id="run-x", rounds=3, **extra):
    """A train request as a server sends it; ``extra`` adds (or, with None, removes) config keys."""
    as_server()
    values = {p.SERVER_ROUND: server_round, p.RUN_ID: run_id, p.NUM_ROUNDS: rounds, **extra}
    config = ConfigRecord({k: v for k, v in values.items() if v is not None})
    content = RecordDict({p.ARRAYS: p.adapter_to_arrays(initial), p.CONFIG: config})
    return Message(content=content, message_type=MessageType.TRAIN, dst_node_id=1)


def as_server():
    """Messages are created by the ServerApp's task (Flower's identity for new messages)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def exhaust(site, *, event):
    """Spend on every record of the site's file in an earlier run (``event=None``: a non-private baseline)."""
    ledger = PrivacyLedger(site.ledger_path)
    dataset = ledger.dataset(read_labeled_file(site.data_path).texts, dataset_id="earlier")
    ledger.reserve(dataset=dataset, event=event, delta=1e-5, limit=None, run_id="earlier")


def test_trained_reply_carries_only_exchanged_tensors_and_spend(setup):
    config, site, context, initial = setup
    reply = train_round(request(initial), context)
    assert dict(reply.content.config_records[p.STATUS]) == {p.STATE: Status.TRAINED.value}  # no site name either
    sent = set(reply.content.array_records[p.ARRAYS].keys())
    assert sent and not any(".lora_A." in k for k in sent)  # FFA: A never leaves the site
    metrics = reply.content.metric_records[p.METRICS]
    assert metrics[p.NUM_EXAMPLES] > 0 and 0 < metrics[p.EPSILON_SPENT] <= config.target_epsilon
    assert metrics[p.MAX_GRAD_NORM] == (config.max_grad_norm or DP_CLIP)  # given, or the recipe's
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


def assert_refused(reply, reason):
    """A refusal: the reason code and nothing else (no weights, no metrics, no ledger, no detail)."""
    assert dict(reply.content.config_records) == {p.STATUS: {p.STATE: Status.REFUSED.value, p.REASON: reason}}
    assert not reply.content.array_records and not reply.content.metric_records


def test_exhausted_site_refuses_without_weights_and_without_detail(setup):
    _config, site, context, initial = setup
    exhaust(site, event=DpSgdEvent(noise_multiplier=0.5, sample_rate=0.5, steps=300, max_grad_norm=1.0))
    before = site.ledger_path.read_bytes()
    assert_refused(train_round(request(initial), context), "budget-exhausted")
    assert site.ledger_path.read_bytes() == before


def test_a_dataset_trained_without_privacy_is_refused(setup):
    _config, site, context, initial = setup
    exhaust(site, event=None)
    before = site.ledger_path.read_bytes()
    assert_refused(train_round(request(initial), context), "non-private-history")
    assert site.ledger_path.read_bytes() == before


def test_a_bad_global_adapter_is_refused_before_training(setup):
    _config, site, context, initial = setup
    import torch

    poisoned = {**initial, next(iter(initial)): torch.full_like(initial[next(iter(initial))], float("nan"))}
    assert_refused(train_round(request(poisoned), context), "bad-request")
    assert not site.ledger_path.exists(), "nothing may be reserved for a round that cannot train"


def test_site_settings_come_only_from_the_node_config(setup):
    config, site, context, _initial = setup
    resolved = resolve_site(context.node_config, config)
    assert resolved.data_path == site.data_path and resolved.max_epsilon == site.max_epsilon
    with pytest.raises(ConfigError, match="'ledger-path': Extra inputs"):  # a server cannot smuggle site settings
        parse_run_config({**config.to_run_config(), "ledger-path": "/tmp/x"})
    with pytest.raises(ConfigError, match="no site settings"):
        resolve_site({}, config)


def test_a_site_precision_it_cannot_train_privately_in_spends_nothing(tiny_model_dir, sample_jsonl, tmp_path):
    """The site's own hardware settings are checked before any reservation (fp16's loss scaling breaks the clip)."""
    config = run_config(tiny_model_dir, tmp_path)
    site = make_sites(tmp_path, [sample_jsonl], precision="fp16")[0]
    with pytest.raises(ConfigError, match="fp16"):
        train_round(request(initial_state(config)), site_context(site, config))
    assert not site.ledger_path.exists()  # refused before the ledger was even opened: nothing reserved
