"""A strategy's state survives a checkpoint: a restored strategy samples exactly as the original goes on to."""

from __future__ import annotations

from server.strategies.base import StrategyState
from server.strategies.fedavg import LoraFedAvg


class Nodes:
    """The part of a Grid that sampling uses."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def strategy(sites_per_round=2):
    return LoraFedAvg(
        global_keys=["a"],
        trainable_keys=["a"],
        min_sites=2,
        sites_per_round=sites_per_round,
        max_update_norm=1.0,
        seed=4,
        federated_evaluation=False,
    )


def test_restore_continues_the_sampling_sequence_and_the_exclusions():
    grid = Nodes(range(1, 9))
    original = strategy()
    original.sample(grid)
    original.restore(StrategyState(rng_state=original.state().rng_state, excluded={5: "refused"}))
    saved = StrategyState.from_json(original.state().to_json())
    expected = [original.sample(grid)[0] for _ in range(6)]
    restored = strategy()
    restored.restore(saved)
    assert [restored.sample(grid)[0] for _ in range(6)] == expected
    assert all(5 not in sampled for sampled in expected)


def test_too_few_eligible_sites_stop_with_a_reason():
    s = strategy(sites_per_round=0)
    s.restore(StrategyState(rng_state=s.state().rng_state, excluded={1: "refused", 2: "refused"}))
    sampled, reason = s.sample(Nodes([1, 2, 3]))
    assert sampled == () and reason is not None and "only 1 of 3 sites can still train" in reason
