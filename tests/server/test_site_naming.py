"""Sites are named by their authenticated identity, and a dead site is one crash under it (real rounds, in process)."""

from __future__ import annotations

import json
from pathlib import Path

from common.federation.rounds import Status
from server.report import METRICS_FILE, PRIVACY_REPORT_FILE
from tests.flower_helpers import LocalGrid
from tests.server.federation_helpers import (
    by_name,
    dispatch,
    federate,
    run_config,
    sent_by,
    site_settings,
    stand_ins,
    superlink_error,
)

NODES = [101, 202, 303]


def run_with(config, model, keys, *, tamper=None, names=None, settings_name="site"):
    """Three stand-in sites whose own settings all say ``settings_name`` (the client-side default)."""
    from server.federation import run_federation

    sites = stand_ins(NODES, keys)
    grid = LocalGrid(
        config,
        site_settings(config.out_dir, 3, name=settings_name),
        tamper,
        node_ids=NODES,
        names=names,
        train=dispatch(sites),
    )
    return run_federation(grid, config, model=model)


def test_three_sites_with_the_same_self_declared_name_are_three_entries(tiny_model_dir, tmp_path, setting):
    model, keys = setting
    names = {101: "hospital-a", 202: "hospital-b", 303: "clinic-c"}
    config = run_config(tiny_model_dir, tmp_path / "named")
    run_with(config, model, keys, names=names)
    report = json.loads((Path(config.out_dir) / PRIVACY_REPORT_FILE).read_text())
    assert sorted(report["sites"]) == ["clinic-c", "hospital-a", "hospital-b"]
    assert {name: entry["node_id"] for name, entry in report["identities"].items()} == {
        "hospital-a": 101,
        "hospital-b": 202,
        "clinic-c": 303,
    }
    assert sorted({w["site"] for w in report["witnesses"]}) == ["clinic-c", "hospital-a", "hospital-b"]
    # Nobody registered the nodes: each is its own node id, never the name the sites call themselves.
    unnamed = run_config(tiny_model_dir, tmp_path / "unnamed")
    run_with(unnamed, model, keys, names={})
    report = json.loads((Path(unnamed.out_dir) / PRIVACY_REPORT_FILE).read_text())
    assert sorted(report["sites"]) == ["node 101", "node 202", "node 303"]


def test_a_site_killed_mid_run_is_one_crash_under_its_identity(tiny_model_dir, tmp_path, setting):
    model, keys = setting
    config = run_config(tiny_model_dir, tmp_path / "run", num_rounds=2)
    killed = {"round": 0}

    def dies_in_round_two(node, reply):
        if node == 303:
            killed["round"] += 1
            if killed["round"] == 2:  # the SuperLink answers for the dead SuperNode
                return superlink_error(reply)
        return reply

    result = run_with(config, model, keys, tamper=dies_in_round_two, names={101: "a", 202: "b", 303: "c"})
    assert result.completed_rounds == 2
    crashes = [(c.round, c.site.site_name, c.site.node_id) for c in result.crashes]
    assert crashes == [(2, "c", 303)]
    assert {s.node_id for r in result.history for s in r.sites} == set(NODES)  # no "node 1"
    metrics = json.loads((Path(config.out_dir) / METRICS_FILE).read_text())
    assert [(c["round"], c["site_name"], c["node_id"]) for c in metrics["crashes"]] == [(2, "c", 303)]
    assert "Node unavailable" in by_name(result, 2)["c"].reason


def test_replies_from_unsampled_nodes_and_duplicates_are_ignored(tiny_model_dir, tmp_path, setting):
    model, keys = setting
    config = run_config(tiny_model_dir, tmp_path / "run", sites_per_round=2)
    sites = stand_ins(NODES, keys)

    def noisy(node, reply):
        # A duplicate of every reply, and the same reply from a node nobody asked, answering this node's request.
        return [reply, reply, sent_by(999, reply)]

    result = federate(config, sites, model=model, tamper=noisy)
    record = result.history[-1]
    assert len(record.sampled) == 2 and sorted(s.node_id for s in record.sites) == sorted(record.sampled)
    assert {s.status for s in record.sites} == {Status.TRAINED}
