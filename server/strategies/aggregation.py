"""Pure aggregation math on adapter tensors (no Flower types), so it can be tested exactly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

LORA_A = ".lora_A."
LORA_B = ".lora_B."


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """sum_k w_k t_k / sum_k w_k, accumulated in float64 and returned in the inputs' dtype."""
    total = float(sum(weights))
    if not tensors or total <= 0:
        raise ValueError("weighted mean needs at least one tensor and a positive total weight")
    acc = torch.zeros_like(tensors[0], dtype=torch.float64)
    for tensor, weight in zip(tensors, weights, strict=True):
        acc += tensor.double() * (weight / total)
    return acc.to(tensors[0].dtype)


def weighted_mean_values(values: Sequence[float], weights: Sequence[float]) -> float:
    """sum_k w_k v_k / sum_k w_k for plain numbers (metrics), in float64."""
    return float(weighted_mean([torch.tensor(float(v), dtype=torch.float64) for v in values], weights))


def average_keys(
    updates: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float], keys: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Weighted mean of each of ``keys`` separately."""
    return {key: weighted_mean([u[key] for u in updates], weights) for key in keys}


def lora_pairs(keys: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Map each adapted layer to its (A key, B key): 'x.lora_A.weight' pairs with 'x.lora_B.weight'."""
    pairs = {}
    for key in keys:
        if LORA_A in key:
            b_key = key.replace(LORA_A, LORA_B)
            if b_key not in keys:
                raise ValueError(f"LoRA tensor {key} has no matching B tensor")
            pairs[key.split(LORA_A)[0]] = (key, b_key)
    return pairs


def product_average(
    updates: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float], a_key: str, b_key: str
) -> torch.Tensor:
    """sum_k w_k B_k A_k / sum_k w_k, in float64."""
    return weighted_mean([u[b_key].double() @ u[a_key].double() for u in updates], weights)


def refactorise(product: torch.Tensor, rank: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of rank ``rank`` whose product is the best rank-r approximation of ``product``.

    The truncated SVD M = U S V^T gives B = U_r sqrt(S_r) and A = sqrt(S_r) V_r^T (Eckart-Young): when ``product``
    already has rank <= r (e.g. all sites share A), the result reproduces it exactly.
    """
    u_mat, singular, v_t = torch.linalg.svd(product.double(), full_matrices=False)
    root = singular[:rank].sqrt()
    new_b = u_mat[:, :rank] * root
    new_a = root[:, None] * v_t[:rank]
    return new_a.to(dtype), new_b.to(dtype)


def product_average_refactorised(
    updates: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float], a_key: str, b_key: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """New (A, B) of rank r whose product is the best rank-r approximation of sum_k w_k B_k A_k (normalised)."""
    rank = updates[0][a_key].shape[0]
    return refactorise(product_average(updates, weights, a_key, b_key), rank, updates[0][a_key].dtype)
