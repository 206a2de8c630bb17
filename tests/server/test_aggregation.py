"""Strategy math: FFA exactness, SVD re-factorisation, example weighting."""

from __future__ import annotations

import pytest
import torch

from server.strategies.aggregation import lora_pairs, product_average_refactorised, weighted_mean
from server.strategies.fedavg import LoraFedAvg
from server.strategies.ffa import FfaLora
from server.strategies.product import ProductSvd

A, B, HEAD = "layer.lora_A.weight", "layer.lora_B.weight", "classifier.weight"


def make(cls, keys, trainable):
    return cls(
        global_keys=keys,
        trainable_keys=trainable,
        min_sites=1,
        sites_per_round=0,
        max_update_norm=1e9,
        seed=0,
        federated_evaluation=False,
    )


def updates(k=3, r=4, out=16, inp=12, shared_a=None):
    g = torch.Generator().manual_seed(0)
    return [
        {
            A: shared_a if shared_a is not None else torch.randn(r, inp, generator=g),
            B: torch.randn(out, r, generator=g),
            HEAD: torch.randn(2, out, generator=g),
        }
        for _ in range(k)
    ]


def test_weighted_mean_uses_example_counts():
    tensors = [torch.tensor([0.0, 4.0]), torch.tensor([4.0, 0.0])]
    assert torch.allclose(weighted_mean(tensors, [1, 3]), torch.tensor([3.0, 1.0]))
    with pytest.raises(ValueError):
        weighted_mean(tensors, [0, 0])


def test_ffa_averaging_is_exact_and_leaves_a_alone():
    shared = torch.randn(4, 12)
    ups = updates(shared_a=shared)
    weights = [100, 50, 250]
    strategy = make(FfaLora, [A, B, HEAD], {B, HEAD})
    assert strategy.exchanged_keys == [B, HEAD]
    current = {A: shared, B: torch.zeros(16, 4), HEAD: torch.zeros(2, 16)}
    result = strategy.combine(current, [{k: u[k] for k in (B, HEAD)} for u in ups], weights)
    assert torch.equal(result[A], shared)
    exact = weighted_mean([u[B] @ u[A] for u in ups], weights)
    assert torch.allclose(result[B] @ result[A], exact, atol=1e-5)


def test_fedavg_is_inexact_for_different_a():
    ups = updates()
    strategy = make(LoraFedAvg, [A, B, HEAD], {A, B, HEAD})
    result = strategy.combine({A: torch.zeros(4, 12), B: torch.zeros(16, 4), HEAD: torch.zeros(2, 16)}, ups, [1, 1, 1])
    exact = weighted_mean([u[B] @ u[A] for u in ups], [1, 1, 1])
    assert torch.allclose(result[A], weighted_mean([u[A] for u in ups], [1, 1, 1]))
    assert not torch.allclose(result[B] @ result[A], exact, atol=1e-3)


def test_product_refactorisation_is_the_best_rank_r_approximation():
    ups = updates()
    weights = [2, 1, 1]
    new_a, new_b = product_average_refactorised(ups, weights, A, B)
    assert new_a.shape == (4, 12) and new_b.shape == (16, 4)
    average = weighted_mean([u[B].double() @ u[A].double() for u in ups], weights)
    u, s, vt = torch.linalg.svd(average, full_matrices=False)
    best = (u[:, :4] * s[:4]) @ vt[:4]
    assert torch.allclose((new_b @ new_a).double(), best, atol=1e-5)


def test_product_is_exact_when_the_average_has_rank_r():
    shared = torch.randn(4, 12)
    ups = updates(shared_a=shared)
    strategy = make(ProductSvd, [A, B, HEAD], {A, B, HEAD})
    result = strategy.combine({A: shared, B: torch.zeros(16, 4), HEAD: torch.zeros(2, 16)}, ups, [1, 2, 3])
    exact = weighted_mean([u[B] @ u[A] for u in ups], [1, 2, 3])
    assert torch.allclose(result[B] @ result[A], exact, atol=1e-5)
    assert torch.allclose(result[HEAD], weighted_mean([u[HEAD] for u in ups], [1, 2, 3]))


def test_lora_pairs():
    assert lora_pairs([A, B, HEAD]) == {"layer": (A, B)}
    with pytest.raises(ValueError, match="no matching B"):
        lora_pairs([A, HEAD])
