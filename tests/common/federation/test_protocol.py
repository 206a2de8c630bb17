"""Adapter tensors <-> Flower ArrayRecords: exact round trip, transport dtype, peers' bad arrays rejected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord

from common.errors import UpdateRejectedError
from common.federation import protocol as p

STATE = {"a": torch.randn(3, 4), "b": torch.randn(2), "steps": torch.tensor([3], dtype=torch.int64)}


def test_round_trip_is_exact_and_can_select_keys():
    back = p.arrays_to_adapter(p.adapter_to_arrays(STATE), source="test")
    assert set(back) == set(STATE) and all(torch.equal(back[k], STATE[k]) for k in STATE)
    assert set(p.arrays_to_adapter(p.adapter_to_arrays(STATE, ["b"]), source="test")) == {"b"}


def test_float16_transport_casts_floats_only_and_halves_the_bytes():
    half = p.adapter_to_arrays(STATE, dtype=torch.float16)
    back = p.arrays_to_adapter(half, source="test")
    assert back["a"].dtype == torch.float16 and back["steps"].dtype == torch.int64
    assert torch.allclose(back["a"].float(), STATE["a"], rtol=1e-3, atol=1e-3)
    full = p.adapter_to_arrays({"a": STATE["a"]})
    assert p.serialized_size(p.adapter_to_arrays({"a": STATE["a"]}, dtype=torch.float16)) < p.serialized_size(full)


def test_non_numeric_arrays_from_a_peer_are_rejected():
    record = ArrayRecord({"a": Array(np.array(["x", "y"]))})
    with pytest.raises(UpdateRejectedError, match="non-numeric dtype"):
        p.arrays_to_adapter(record, source="site-z")
