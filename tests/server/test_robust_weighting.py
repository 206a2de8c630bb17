"""Robust weighting in real rounds: no site can steer or stop the aggregate with the weight it claims."""

from __future__ import annotations

import pytest
import torch
from flwr.app import MetricRecord

from common.federation import protocol as p
from common.federation.rounds import Status
from server.strategies.admission import over_share
from tests.server.federation_helpers import (
    by_name,
    federate,
    final_adapter,
    run_config,
    stand_ins,
    with_records,
)


def claim(examples, node=3):
    """A tamper: ``node`` reports ``examples`` as its num-examples."""

    def tamper(sender, reply):
        if sender != node:
            return reply
        return with_records(reply, metrics=MetricRecord({**reply.content[p.METRICS], p.NUM_EXAMPLES: examples}))

    return tamper


def silent(node=3):
    return lambda sender, reply: None if sender == node else reply


def equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_site_claiming_a_trillion_examples_is_rejected_excluded_and_steers_nothing(tiny_model_dir, tmp_path, setting):
    model, keys = setting
    config = run_config(tiny_model_dir, tmp_path / "attack", num_rounds=2)
    result = federate(config, stand_ins([1, 2, 3], keys), model=model, tamper=claim(10**12))
    reference = run_config(tiny_model_dir, tmp_path / "reference", num_rounds=2)
    federate(reference, stand_ins([1, 2, 3], keys), model=model, tamper=silent())

    attacker = by_name(result, 1)["site-2"]
    assert attacker.status is Status.REJECTED
    assert "100.0% of the round's total weight" in attacker.reason and "--max-site-weight 0.5" in attacker.reason
    assert "excluded for the rest of the run" in attacker.reason
    assert {s.status for n, s in by_name(result, 1).items() if n != "site-2"} == {Status.TRAINED}
    assert result.history[-1].sampled == (1, 2)  # never sampled again
    assert equal(final_adapter(config), final_adapter(reference))  # the global is the honest sites' aggregate


@pytest.mark.parametrize("examples", [float("inf"), float("nan"), 10**400, -(10**12), 0, 2.5])
def test_a_non_finite_or_nonsense_weight_is_rejected_and_the_round_completes(
    tiny_model_dir, tmp_path, setting, examples
):
    model, keys = setting
    config = run_config(tiny_model_dir, tmp_path / "attack")
    result = federate(config, stand_ins([1, 2, 3], keys), model=model, tamper=claim(examples))
    reference = run_config(tiny_model_dir, tmp_path / "reference")
    federate(reference, stand_ins([1, 2, 3], keys), model=model, tamper=silent())
    assert result.completed_rounds == 1
    sites = by_name(result, 1)
    assert sites["site-2"].status is Status.REJECTED and "num-examples" in sites["site-2"].reason
    assert sites["site-0"].status is sites["site-1"].status is Status.TRAINED
    assert equal(final_adapter(config), final_adapter(reference))


def test_a_site_whose_num_examples_changes_is_rejected_and_excluded(tiny_model_dir, tmp_path, setting):
    model, keys = setting
    sites = stand_ins([1, 2, 3], keys)

    def grows(sender, reply):
        return claim(150, node=2)(sender, reply) if len(sites[2].requests) >= 2 else reply

    config = run_config(tiny_model_dir, tmp_path / "run", num_rounds=3)
    result = federate(config, sites, model=model, tamper=grows)
    assert result.completed_rounds == 3
    assert by_name(result, 1)["site-1"].status is Status.TRAINED
    changed = by_name(result, 2)["site-1"]
    assert changed.status is Status.REJECTED and "num-examples changed from 100 to 150" in changed.reason
    assert result.history[-1].sampled == (1, 3)


def test_uniform_weighting_counts_every_update_once(tiny_model_dir, tmp_path, setting):
    model, keys = setting
    initial = model.initial_state()
    steps = []
    for weighting in ("uniform", "examples"):
        sites = stand_ins([1, 2, 3], keys)
        for site, examples in zip(sites.values(), (100, 100, 600), strict=True):
            site.num_examples = examples
        steps = [site.step for site in sites.values()]
        config = run_config(tiny_model_dir, tmp_path / weighting, weighting=weighting, min_sites=2)
        result = federate(config, sites, model=model)
        statuses = {name: site.status for name, site in by_name(result, 1).items()}
        if weighting == "uniform":
            assert set(statuses.values()) == {Status.TRAINED}
            adapter = final_adapter(config)
            for key in keys:
                expected = torch.stack([(initial[key] + s).half().float() for s in steps]).mean(0)
                assert torch.allclose(adapter[key], expected, atol=1e-6), key
        else:  # 600 of 800 examples: three quarters of the weight, above the default cap of one half
            assert statuses == {"site-0": Status.TRAINED, "site-1": Status.TRAINED, "site-2": Status.REJECTED}
            assert "75.0% of the round's total weight" in by_name(result, 1)["site-2"].reason


def test_the_share_rule_rejects_the_largest_first_and_stops_when_no_set_could_comply():
    assert over_share({"a": 1e12, "b": 100, "c": 100}, 0.5) == pytest.approx({"a": 1.0}, rel=1e-6)
    assert over_share({"a": 300, "b": 200, "c": 100}, 0.5) == {}  # exactly half is allowed
    # Two colluding giants share the cap between them: the cap bounds one site, not a coalition.
    assert over_share({"a": 1e12, "b": 1e12, "c": 100}, 0.5) == {}
    # Greedy: after the giant goes, 300 of 500 is still above half; then one update alone cannot comply: stop.
    assert over_share({"a": 1e12, "b": 300, "c": 200}, 0.5) == pytest.approx({"a": 1.0, "b": 0.6})
    assert over_share({"a": 1.0}, 0.5) == {} and over_share({}, 0.5) == {}
