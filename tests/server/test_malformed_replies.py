"""Nothing a reply contains can raise out of aggregation: one site sends every malformation, the round completes.

Each case replaces one site's train reply in a real round (stand-in sites, the real server loop) and checks that the
round completes with exactly the honest sites' aggregate and the bad site never counted as trained.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.federation import protocol as p
from common.federation.rounds import Status
from tests.flower_helpers import replace_arrays
from tests.server.federation_helpers import (
    by_name,
    federate,
    final_adapter,
    run_config,
    stand_ins,
    superlink_error,
    with_content,
    with_records,
)


def unchecked(record, **values):
    """``record`` holding values its constructor refuses (what a broken peer's decoder could hand over)."""
    record._data.update({key.replace("_", "-"): value for key, value in values.items()})
    return record


def metrics(reply, **values):
    return with_records(
        reply, metrics=MetricRecord({**reply.content[p.METRICS], **{k.replace("_", "-"): v for k, v in values.items()}})
    )


def ledger(reply, **values):
    return with_records(
        reply, ledger=ConfigRecord({**reply.content[p.LEDGER], **{k.replace("_", "-"): v for k, v in values.items()}})
    )


def status(reply, record):
    return with_records(reply, status=record)


def first_tensor(mutate):
    return lambda reply: replace_arrays(
        reply, lambda t: {k: (mutate(v) if i == 0 else v) for i, (k, v) in enumerate(t.items())}
    )


def raw_array(reply, array):
    """The first tensor replaced by a raw Array (bytes a peer chose)."""
    arrays = dict(reply.content[p.ARRAYS])
    arrays[next(iter(arrays))] = array
    return with_records(reply, arrays=ArrayRecord(arrays))


MALFORMED = {
    # num-examples
    "weight inf": lambda r: metrics(r, num_examples=float("inf")),
    "weight nan": lambda r: metrics(r, num_examples=float("nan")),
    "weight 1e300": lambda r: metrics(r, num_examples=1e300),
    "weight -1": lambda r: metrics(r, num_examples=-1),
    "weight 0": lambda r: metrics(r, num_examples=0),
    "weight 2**70": lambda r: metrics(r, num_examples=2**70),
    "weight 10**400": lambda r: metrics(r, num_examples=10**400),
    "weight 2.5": lambda r: metrics(r, num_examples=2.5),
    "weight list[int]": lambda r: metrics(r, num_examples=[100, 100]),
    "weight list[float]": lambda r: metrics(r, num_examples=[100.0]),
    "weight bool": lambda r: with_records(r, metrics=unchecked(MetricRecord(), num_examples=True)),
    "weight string": lambda r: with_records(r, metrics=unchecked(MetricRecord(), num_examples="100")),
    "weight missing": lambda r: with_records(r, metrics=MetricRecord({p.EPSILON_SPENT: 1.0})),
    # other metrics
    "epsilon nan": lambda r: metrics(r, epsilon_spent=float("nan")),
    "epsilon list": lambda r: metrics(r, epsilon_spent=[1.0, 2.0]),
    "delta 2": lambda r: metrics(r, delta=2.0),
    "sample rate 0": lambda r: metrics(r, sample_rate=0.0),
    "steps 1.5": lambda r: metrics(r, steps=1.5),
    "an extra metric": lambda r: metrics(r, train_loss=0.1),
    # status
    "status missing": lambda r: with_records(r, status=None),
    "state missing": lambda r: status(r, ConfigRecord({})),
    "state bytes": lambda r: status(r, ConfigRecord({p.STATE: b"trained"})),
    "state int": lambda r: status(r, ConfigRecord({p.STATE: 1})),
    "state bool": lambda r: status(r, ConfigRecord({p.STATE: True})),
    "state list": lambda r: status(r, ConfigRecord({p.STATE: ["trained"]})),
    "state upper case": lambda r: status(r, ConfigRecord({p.STATE: "TRAINED"})),
    "status a metric record": lambda r: with_records(r, status=MetricRecord({p.STATE: 1})),
    "status with a site name": lambda r: status(r, ConfigRecord({p.STATE: "trained", "site-name": "site-0"})),
    "refusal with an unknown code": lambda r: status(r, ConfigRecord({p.STATE: "refused", p.REASON: [b"x"]})),
    # records
    "metrics missing": lambda r: with_records(r, metrics=None),
    "arrays missing": lambda r: with_records(r, arrays=None),
    "ledger missing": lambda r: with_records(r, ledger=None),
    "an extra config record": lambda r: with_records(r, notes=ConfigRecord({"a": b"\x00"})),
    "an extra array record": lambda r: with_records(r, more=ArrayRecord()),
    "an extra metric record": lambda r: with_records(r, train_metrics=MetricRecord({"loss": 0.2})),
    "metrics as a config record": lambda r: with_records(r, metrics=ConfigRecord({p.NUM_EXAMPLES: 100})),
    "arrays as a config record": lambda r: with_records(r, arrays=ConfigRecord({"x": 1})),
    "nothing at all": lambda r: with_content(r, RecordDict()),
    # ledger
    "ledger seq -1": lambda r: ledger(r, ledger_seq=-1),
    "ledger seq bool": lambda r: ledger(r, ledger_seq=True),
    "ledger seq string": lambda r: ledger(r, ledger_seq="7"),
    "ledger head bytes": lambda r: ledger(r, ledger_head=b"\x00" * 32),
    "ledger head not hex": lambda r: ledger(r, ledger_head="z" * 64),
    "ledger proof a string": lambda r: ledger(r, ledger_proof="a" * 64),
    "ledger proof bools": lambda r: ledger(r, ledger_proof=[True, False]),
    "ledger id bytes": lambda r: ledger(r, ledger_id=b"id"),
    "ledger id control chars": lambda r: ledger(r, ledger_id="\x1b[2J"),
    "ledger an extra key": lambda r: ledger(r, signature="x"),
    # tensors
    "tensor nan": first_tensor(lambda v: torch.full_like(v, float("nan"))),
    "tensor inf": first_tensor(lambda v: torch.full_like(v, float("inf"))),
    "tensor 60000 (the update norm)": first_tensor(lambda v: torch.full(v.shape, 6e4, dtype=v.dtype)),
    "tensor 1e30 cast to float16": first_tensor(lambda v: torch.full(v.shape, 1e30).to(v.dtype)),
    "tensor float64": first_tensor(lambda v: v.double()),
    "tensor int32": first_tensor(lambda v: v.int()),
    "tensor bool": first_tensor(lambda v: v > 0),
    "tensor complex": first_tensor(lambda v: v.to(torch.complex64)),
    "tensor empty": first_tensor(lambda v: v.flatten()[:0]),
    "tensor shape": first_tensor(lambda v: v.flatten()),
    "tensor scalar": first_tensor(lambda v: v.flatten()[0]),
    "tensors none": lambda r: with_records(r, arrays=ArrayRecord()),
    "tensor extra": lambda r: replace_arrays(r, lambda t: {**t, "base_model.x": torch.zeros(2)}),
    "array of objects": lambda r: raw_array(
        r, Array(dtype="object", shape=(2,), stype="numpy.ndarray", data=b"\x93NUMPY")
    ),
    "array of strings": lambda r: raw_array(r, Array(np.array(["a", "b"]))),
    "array truncated bytes": lambda r: raw_array(
        r, Array(dtype="float16", shape=(8, 8), stype="numpy.ndarray", data=b"\x00" * 3)
    ),
    "array unknown stype": lambda r: raw_array(
        r, Array(dtype="float16", shape=(2,), stype="pickle", data=b"cos\nsystem\n")
    ),
    # whole replies
    "an error reply from the SuperLink": superlink_error,
    "a duplicate after the real reply": lambda r: [r, metrics(r, num_examples=10**12)],
    "no reply": lambda r: None,
}


@pytest.fixture(scope="module")
def honest(tiny_model_dir, tmp_path_factory, setting):
    """The global adapter after a round of the two honest sites alone."""
    model, keys = setting
    config = run_config(tiny_model_dir, tmp_path_factory.mktemp("honest"))
    federate(config, stand_ins([1, 2], keys), model=model)
    return final_adapter(config)


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_reply_leaves_the_round_to_the_honest_sites(tiny_model_dir, tmp_path, setting, honest, case):
    model, keys = setting
    config = run_config(tiny_model_dir, tmp_path / "run")
    sites = stand_ins([1, 2, 3], keys)
    sites[3].step = 0.5  # a bad update, if it ever counted, would show
    result = federate(
        config, sites, model=model, tamper=lambda node, reply: MALFORMED[case](reply) if node == 3 else reply
    )
    assert result.completed_rounds == 1
    outcome = by_name(result, 1)
    assert outcome["site-0"].status is outcome["site-1"].status is Status.TRAINED
    if case == "a duplicate after the real reply":  # the first reply counts; the forged duplicate is ignored
        assert outcome["site-2"].status is Status.TRAINED and len(result.history[-1].sites) == 3
        return
    assert outcome["site-2"].status in (Status.REJECTED, Status.CRASHED, Status.REFUSED), outcome["site-2"]
    assert len(result.history[-1].sites) == 3  # one outcome per sampled site, nothing for "node 1"
    adapter = final_adapter(config)
    assert all(torch.equal(adapter[k], honest[k]) for k in honest), case
