"""Witnessed ledger heads in real rounds: honest heads accepted round after round, rollbacks and forks excluded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ConfigRecord

from common.federation import protocol as p
from common.federation.rounds import Status
from common.privacy.witnesses import read_witnesses
from server.checkpoint import load_checkpoint
from server.federation import CHECKPOINT_DIR
from server.report import PRIVACY_REPORT_FILE
from tests.server.federation_helpers import (
    StandInLedger,
    by_name,
    federate,
    run_config,
    stand_ins,
    with_records,
)


def ledger_record(reply, **values):
    return with_records(
        reply, ledger=ConfigRecord({**reply.content[p.LEDGER], **{k.replace("_", "-"): v for k, v in values.items()}})
    )


def test_honest_heads_are_witnessed_round_after_round_and_reported_for_the_audit(tiny_model_dir, tmp_path, setting):
    model, keys = setting
    config = run_config(tiny_model_dir, tmp_path / "run", num_rounds=3)
    sites = stand_ins([1, 2, 3], keys)
    result = federate(config, sites, model=model)
    assert result.completed_rounds == 3
    assert all(s.status is Status.TRAINED for r in result.history for s in r.sites)
    # Each request after the first shows the site the head witnessed in the round before.
    for site in sites.values():
        first, *later = [m.content.config_records[p.CONFIG] for m in site.requests]
        assert p.WITNESSED_HASH not in first
        assert [c[p.WITNESSED_SEQ] for c in later] == [1, 3]
        assert (
            later[-1][p.WITNESSED_HASH] == site.ledger.hashes[3]
            and later[-1][p.WITNESSED_LEDGER_ID] == site.ledger.ledger_id
        )
    report_path = Path(config.out_dir) / PRIVACY_REPORT_FILE
    report = json.loads(report_path.read_text())
    assert len(report["witnesses"]) == 9
    assert all(set(w) == {"site", "round", "ledger_id", "seq", "hash"} for w in report["witnesses"])
    witnessed = read_witnesses(report_path)  # the audit's own reader
    last = [w for w in witnessed if w.site == "site-0"][-1]
    assert (last.round, last.head.seq, last.head.hash) == (3, 5, sites[1].ledger.hashes[5])


@pytest.mark.parametrize("attack", ["rolled back", "forged proof", "another ledger", "did not grow", "forked"])
def test_a_ledger_that_does_not_extend_the_witnessed_head_is_rejected_and_excluded(
    tiny_model_dir, tmp_path, setting, attack
):
    model, keys = setting
    sites = stand_ins([1, 2, 3], keys)
    calls = {"n": 0}

    def tamper(node, reply):
        if node != 3:
            return reply
        calls["n"] += 1
        if calls["n"] != 2:
            return reply
        site = sites[3]
        if attack == "forged proof":
            return ledger_record(reply, ledger_proof=["f" * 64, "e" * 64])
        if attack == "another ledger":
            fresh = StandInLedger()
            fresh.append(4)
            return ledger_record(
                reply,
                ledger_id=fresh.ledger_id,
                ledger_seq=3,
                ledger_head=fresh.hashes[3],
                ledger_proof=fresh.bodies[2:],
            )
        if attack == "did not grow":
            return ledger_record(reply, ledger_seq=1, ledger_head=site.ledger.hashes[1], ledger_proof=[])
        if attack == "forked":  # same length, other records after the witnessed one
            fork = StandInLedger(
                ledger_id=site.ledger.ledger_id, bodies=site.ledger.bodies[:2], hashes=site.ledger.hashes[:2]
            )
            fork.append(2)
            return ledger_record(reply, ledger_head=fork.hashes[3], ledger_proof=site.ledger.bodies[2:])
        # rolled back: an older copy of the ledger was restored before this round, then grew again
        site.ledger.rollback(4)
        site.ledger.append(2)
        return ledger_record(
            reply,
            ledger_seq=site.ledger.head.seq,
            ledger_head=site.ledger.head.hash,
            ledger_proof=site.ledger.bodies[2:],
        )

    config = run_config(tiny_model_dir, tmp_path / "run", num_rounds=3)
    result = federate(config, sites, model=model, tamper=tamper)
    assert result.completed_rounds == 3
    assert by_name(result, 1)["site-2"].status is Status.TRAINED
    cheat = by_name(result, 2)["site-2"]
    assert cheat.status is Status.REJECTED and cheat.ledger_head is None
    assert "ledger rolled back or forked" in cheat.reason and "excluded for the rest of the run" in cheat.reason
    assert result.history[-1].sampled == (1, 2)  # never sampled again
    assert {s.status for n, s in by_name(result, 2).items() if n != "site-2"} == {Status.TRAINED}
    report = json.loads((Path(config.out_dir) / PRIVACY_REPORT_FILE).read_text())
    assert [w["round"] for w in report["witnesses"] if w["site"] == "site-2"] == [1]


def test_a_resumed_server_keeps_witnessing_and_remembers_each_sites_n(tiny_model_dir, tmp_path, setting):
    model, keys = setting
    config = run_config(tiny_model_dir, tmp_path / "run", num_rounds=3)
    sites = stand_ins([1, 2, 3, 4], keys)

    class ServerCrash(Exception):
        pass

    def crash_in_round_two(node, reply):
        if load_checkpoint(Path(config.out_dir) / CHECKPOINT_DIR) is not None:
            raise ServerCrash
        return reply

    with pytest.raises(ServerCrash):
        federate(config, sites, model=model, tamper=crash_in_round_two)
    saved = load_checkpoint(Path(config.out_dir) / CHECKPOINT_DIR)
    assert saved.strategy.examples == {"site-0": 100, "site-1": 100, "site-2": 100, "site-3": 100}
    witnessed = saved.strategy.witnesses["site-0"]
    # While the server was down, site-1's ledger was rolled back; site-2 now reports another N.
    sites[2].ledger.rollback(4)
    sites[3].num_examples = 120
    result = federate(config, sites, model=model)
    assert result.completed_rounds == 3
    request = sites[1].requests[-2].content.config_records[p.CONFIG]  # the resumed server's first request
    assert (request[p.WITNESSED_SEQ], request[p.WITNESSED_HASH]) == (witnessed.seq, witnessed.hash)
    round_two = by_name(result, 2)
    assert round_two["site-0"].status is round_two["site-3"].status is Status.TRAINED
    assert round_two["site-1"].status is Status.REJECTED and "rolled back or forked" in round_two["site-1"].reason
    assert round_two["site-2"].status is Status.REJECTED and "changed from 100 to 120" in round_two["site-2"].reason
    assert result.history[-1].sampled == (1, 4)
