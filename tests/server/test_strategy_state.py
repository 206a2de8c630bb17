"""A strategy's state survives a checkpoint: a restored strategy samples, excludes and witnesses as the original."""

from __future__ import annotations

from common.privacy.chain import LedgerHead
from server.identities import IdentityTable, SiteIdentity
from server.strategies.fedavg import LoraFedAvg
from server.strategies.state import StrategyState


class Nodes:
    """The part of a Grid that sampling uses."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def strategy(sites_per_round=2, identities=None):
    return LoraFedAvg(
        global_keys=["a"],
        trainable_keys=["a"],
        min_sites=2,
        sites_per_round=sites_per_round,
        max_update_norm=1.0,
        seed=4,
        federated_evaluation=False,
        identities=identities,
    )


def test_restore_continues_the_sampling_sequence_and_the_exclusions():
    grid = Nodes(range(1, 9))
    original = strategy()
    original.sample(grid)
    original.restore(StrategyState(rng_state=original.state().rng_state, excluded={"node 5": "refused"}))
    saved = StrategyState.from_json(original.state().to_json())
    expected = [original.sample(grid)[0] for _ in range(6)]
    restored = strategy()
    restored.restore(saved)
    assert [restored.sample(grid)[0] for _ in range(6)] == expected
    assert all(5 not in sampled for sampled in expected)


def test_too_few_eligible_sites_stop_with_a_reason():
    s = strategy(sites_per_round=0)
    s.restore(StrategyState(rng_state=s.state().rng_state, excluded={"node 1": "refused", "node 2": "refused"}))
    sampled, reason = s.sample(Nodes([1, 2, 3]))
    assert sampled == () and reason is not None and "only 1 of 3 sites can still train" in reason


def test_exclusions_witnesses_and_n_are_kept_per_identity_whatever_the_node_id(tmp_path):
    table = IdentityTable(tmp_path)
    table.register(SiteIdentity(11, "hospital-a", None, "simulation"))
    head = LedgerHead("ledger-a", 3, "a" * 64)
    state = StrategyState(
        rng_state=strategy().state().rng_state,
        excluded={"hospital-a": "ledger rolled back"},
        witnesses={"hospital-b": head},
        examples={"hospital-b": 120},
    )
    restored = StrategyState.from_json(state.to_json())
    assert restored == state
    s = strategy(sites_per_round=0, identities=table)
    s.restore(restored)
    assert s.eligible([11, 12, 13]) == [12, 13]
    assert s.state() == state


def test_a_state_written_before_identities_reads_its_exclusions_as_node_ids():
    old = {"rng_state": list(strategy().state().to_json()["rng_state"]), "excluded": {"5": "refused"}}
    assert StrategyState.from_json(old).excluded == {"node 5": "refused"}
