from __future__ import annotations

import pytest
import torch

from common.errors import UpdateRejectedError
from server.validation import validate_update

REF = {"b": torch.zeros(3, 2), "head": torch.zeros(2)}


def check(update, bound=10.0):
    return validate_update(update, REF, max_update_norm=bound, source="site-x (node 7)")


def test_valid_update_returns_its_norm():
    assert check({"b": torch.ones(3, 2), "head": torch.zeros(2)}) == pytest.approx(6**0.5)


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"b": torch.zeros(3, 2), "head": torch.zeros(2), "evil": torch.zeros(1)}, "unexpected tensor 'evil'"),
        ({"b": torch.zeros(3, 2)}, "missing tensor 'head'"),
        ({"b": torch.zeros(2, 3), "head": torch.zeros(2)}, r"shape \(2, 3\), expected \(3, 2\)"),
        ({"b": torch.zeros(3, 2, dtype=torch.float64), "head": torch.zeros(2)}, "dtype torch.float64"),
        ({"b": torch.full((3, 2), float("nan")), "head": torch.zeros(2)}, "NaN or infinite"),
        ({"b": torch.full((3, 2), float("inf")), "head": torch.zeros(2)}, "NaN or infinite"),
        ({"b": torch.full((3, 2), 100.0), "head": torch.zeros(2)}, "exceeds the bound 10"),
    ],
)
def test_rejections_name_the_site_and_the_rule(update, message):
    with pytest.raises(UpdateRejectedError, match=message) as info:
        check(update)
    assert "site-x (node 7)" in str(info.value)
