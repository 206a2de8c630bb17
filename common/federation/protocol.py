"""The messages between the server and the sites: record names, keys, and adapter <-> ArrayRecord conversion.

Train request (server -> site): ``arrays`` (the global adapter) and ``config`` (``server-round``,
``fedtune-run-id``, ``num-rounds``). Train reply (site -> server): ``arrays`` with ONLY the tensors the strategy
exchanges, ``metrics`` (``num-examples`` for weighting, privacy spend, training loss) and ``status`` (``trained``);
or, when the site's budget cannot pay for the round, no arrays, ``status`` = ``refused`` with the reason, and
``num-examples`` = 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord

from common.errors import UpdateRejectedError

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
STATUS = "status"

# config (server -> site)
SERVER_ROUND = "server-round"  # FedAvg injects this key itself
RUN_ID = "fedtune-run-id"
NUM_ROUNDS = "num-rounds"

# metrics (site -> server)
NUM_EXAMPLES = "num-examples"
EPSILON_SPENT = "epsilon-spent"
EPSILON_ROUND = "epsilon-round"
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
STEPS = "steps"
TRAIN_LOSS = "train-loss"
EXAMPLES_SEEN = "examples-seen"

# status (site -> server)
STATE = "state"
TRAINED = "trained"
REFUSED = "refused"
SKIPPED = "skipped"  # evaluation: the site does not release metrics
REASON = "reason"
SITE_NAME = "site-name"


def adapter_to_arrays(state: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None) -> ArrayRecord:
    """An ArrayRecord holding ``state`` (restricted to ``keys`` when given), as contiguous CPU tensors."""
    chosen = list(state) if keys is None else [k for k in state if k in set(keys)]
    return ArrayRecord({k: state[k].detach().cpu().contiguous() for k in chosen})


def arrays_to_adapter(record: ArrayRecord, *, source: str) -> dict[str, torch.Tensor]:
    """Decode an ArrayRecord from a peer into tensors; undecodable or non-numeric arrays are rejected.

    Decoding uses numpy without pickle (Flower's ``Array.numpy``), so a peer's bytes can never execute code.
    """
    tensors: dict[str, torch.Tensor] = {}
    for key, array in record.items():
        try:
            values = array.numpy()
        except Exception as exc:  # malformed bytes from a peer: any decoding failure is a rejection
            raise UpdateRejectedError(f"{source}: tensor {key!r} cannot be decoded ({exc})") from None
        if values.dtype.kind not in "fiu":
            raise UpdateRejectedError(f"{source}: tensor {key!r} has non-numeric dtype {values.dtype}")
        tensors[key] = torch.from_numpy(np.array(values, copy=True))
    return tensors


def serialized_size(record: ArrayRecord) -> int:
    """Bytes of an ArrayRecord's tensor payloads as sent over the wire."""
    return sum(len(array.data) for array in record.values())
