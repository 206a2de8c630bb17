"""The messages between the server and the sites: record names, keys, and adapter <-> ArrayRecord conversion.

Train request (server -> site): ``arrays`` (the global adapter) and ``config`` (``server-round``,
``fedtune-run-id``, ``num-rounds``). Train reply (site -> server): ``arrays`` with ONLY the tensors the strategy
exchanges, ``metrics`` (``num-examples`` for weighting, privacy spend, training loss) and ``status`` (``state`` =
:attr:`Status.TRAINED`); or, when the site's budget cannot pay for the round, no arrays, ``state`` =
:attr:`Status.REFUSED` with the reason, and ``num-examples`` = 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch

from common.errors import UpdateRejectedError

if TYPE_CHECKING:
    # Flower is imported where records are built, not at import: it pulls in its own CLI stack (typer, rich), which
    # the bottom layer must not (tests/common/test_layering.py).
    from flwr.app import ArrayRecord, Message

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
TRAIN_SECONDS = "train-seconds"

# status (site -> server): STATE holds a rounds.Status value (trained, refused, or skipped for evaluation)
STATE = "state"
REASON = "reason"
SITE_NAME = "site-name"


def adapter_to_arrays(
    state: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None, *, dtype: torch.dtype | None = None
) -> ArrayRecord:
    """An ArrayRecord holding ``state`` (restricted to ``keys`` when given), as contiguous CPU tensors.

    ``dtype`` casts floating tensors for transport (e.g. float16 uploads: half the bytes; for DP-noised updates
    the rounding, ~5e-4 relative, is far below the noise, and rounding is post-processing, so privacy is unchanged).
    """
    from flwr.app import ArrayRecord

    chosen = list(state) if keys is None else [k for k in state if k in set(keys)]
    tensors = {k: state[k].detach().cpu() for k in chosen}
    if dtype is not None:
        tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in tensors.items()}
    return ArrayRecord({k: v.contiguous() for k, v in tensors.items()})


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
    """Bytes of an ArrayRecord's tensor payloads (each array's serialised data)."""
    return sum(len(array.data) for array in record.values())


def wire_size(message: Message) -> int:
    """Bytes of a whole message as Flower serialises it: every object of its tree, each distinct object once."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())
