"""The messages between the server and the sites: record names, keys, what a site may release, tensor conversion.

Train request (server -> site): ``arrays`` (the global adapter) and ``config``: ``server-round``, ``fedtune-run-id``,
``num-rounds``, ``upload-precision`` (this round's transport dtype, :data:`UPLOAD_PRECISIONS`) and, once the server
has seen this site's ledger head, ``witnessed-ledger-id``/``witnessed-seq``/``witnessed-hash``. A site validates
every value; a malformed one is a refusal with reason ``bad-request``, never a crash.

Train reply (site -> server), and NOTHING else (a site's release whitelist, enforced by tests and built only by
:func:`train_reply` and :func:`refusal_reply`):

* ``arrays``: only the tensors the strategy exchanges, trained with DP-SGD (the DP output);
* ``metrics`` (:data:`TRAIN_METRICS`): public metadata only: ``num-examples`` N (the weight) and the privacy spend
  and mechanism (epsilon spent and of this round, delta, sigma, sample rate q, steps, clip C);
* ``status``: ``state`` (:class:`~common.federation.rounds.Status`) and, for a refusal, a ``reason`` code from
  :data:`REFUSAL_REASONS` (the detail stays in the site's log);
* ``ledger`` (:data:`LEDGER_KEYS`): the site's ledger head after this round and the proof that it extends the
  witnessed head (body digests only, :mod:`common.privacy.chain`); an empty proof when nothing was witnessed.

A refusal carries ``status`` alone (state ``refused`` and the code): no arrays, no metrics, no ledger head.

A training loss, the realised batch sizes, a timing, a label count: each is a function of the private data without
noise, so none is sent (a loss on a crafted head with a batch of N even gave an exact class count). Evaluate replies
carry ``num-examples`` (the held-out size, a function of N) and only the non-DP metrics the SITE named in its own
node config (``release-metrics``, :data:`RELEASABLE_METRICS`), documented as not differentially private; a site
that releases none replies with ``status`` alone (state ``skipped``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.errors import UpdateRejectedError
from common.privacy.chain import LedgerHead
from common.privacy.events import DpSgdEvent

if TYPE_CHECKING:
    # Flower is imported where records are built, not at import: it pulls in its own CLI stack (typer, rich), which
    # the bottom layer must not (tests/common/test_layering.py). torch and numpy are imported where tensors are
    # converted, so that a site's settings can name the releasable metrics without loading them.
    import torch
    from flwr.app import ArrayRecord, Message

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
STATUS = "status"

LEDGER = "ledger"

# config (server -> site)
SERVER_ROUND = "server-round"  # FedAvg injects this key itself
RUN_ID = "fedtune-run-id"
NUM_ROUNDS = "num-rounds"
UPLOAD_PRECISION = "upload-precision"
#: The transport dtypes a server may ask for (absent: the run config's ``upload-precision``).
UPLOAD_PRECISIONS = frozenset({"float16", "float32"})
WITNESSED_LEDGER_ID = "witnessed-ledger-id"
WITNESSED_SEQ = "witnessed-seq"
WITNESSED_HASH = "witnessed-hash"

# metrics (site -> server): public metadata only
NUM_EXAMPLES = "num-examples"
EPSILON_SPENT = "epsilon-spent"
EPSILON_ROUND = "epsilon-round"
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
STEPS = "steps"
MAX_GRAD_NORM = "max-grad-norm"
TRAIN_METRICS = frozenset(
    {NUM_EXAMPLES, EPSILON_SPENT, EPSILON_ROUND, DELTA, NOISE_MULTIPLIER, SAMPLE_RATE, STEPS, MAX_GRAD_NORM}
)

# status (site -> server): STATE holds a rounds.Status value (trained, refused, or skipped for evaluation)
STATE = "state"
REASON = "reason"
STATUS_KEYS = frozenset({STATE, REASON})
#: Why a site refused, as a code: the full reason (dataset, ledger path, spend) stays in the site's own log.
REFUSAL_REASONS = frozenset(
    {
        "budget-exhausted",
        "non-private-history",
        "labels-differ",
        "task-differs",
        "ledger-witness",
        "bad-request",
        "bad-parameters",
    }
)

# ledger (site -> server): where the site's ledger ends, and the proof it extends the witnessed head
LEDGER_ID = "ledger-id"
LEDGER_SEQ = "ledger-seq"
LEDGER_HEAD = "ledger-head"
LEDGER_PROOF = "ledger-proof"
LEDGER_KEYS = frozenset({LEDGER_ID, LEDGER_SEQ, LEDGER_HEAD, LEDGER_PROOF})

#: Held-out metrics a site may opt in to release in evaluate replies (NOT differentially private).
RELEASABLE_METRICS = frozenset({"accuracy", "macro-f1", "loss"})


@dataclass(frozen=True)
class TrainRelease:
    """Everything a trained reply releases besides the DP tensors; each field is public metadata.

    * ``num_examples``: N, the number of distinct records trained on (the aggregation weight; q = batch / N is
      public anyway);
    * ``epsilon_spent``, ``epsilon_round``, ``delta``: the privacy spend, recomputed from the mechanisms recorded
      in the site's ledger, never from the data;
    * ``event``: the mechanism run (sigma, q, steps, clip C), exactly what the ledger charged;
    * ``head`` and ``proof``: where the site's ledger ends, and the body digests of the records after the head the
      server witnessed (each body holds a random event id, so digests reveal no content).
    """

    num_examples: int
    epsilon_spent: float
    epsilon_round: float
    delta: float
    event: DpSgdEvent
    head: LedgerHead
    proof: Sequence[str]

    def metrics(self) -> dict[str, int | float]:
        """The ``metrics`` record: exactly the keys of :data:`TRAIN_METRICS`."""
        return {
            NUM_EXAMPLES: self.num_examples,
            EPSILON_SPENT: self.epsilon_spent,
            EPSILON_ROUND: self.epsilon_round,
            DELTA: self.delta,
            NOISE_MULTIPLIER: self.event.noise_multiplier,
            SAMPLE_RATE: self.event.sample_rate,
            STEPS: self.event.steps,
            MAX_GRAD_NORM: self.event.max_grad_norm,
        }

    def ledger(self) -> dict[str, int | str | list[str]]:
        """The ``ledger`` record: exactly the keys of :data:`LEDGER_KEYS`."""
        return {
            LEDGER_ID: self.head.ledger_id,
            LEDGER_SEQ: self.head.seq,
            LEDGER_HEAD: self.head.hash,
            LEDGER_PROOF: list(self.proof),
        }


def train_reply(request: Message, arrays: ArrayRecord, release: TrainRelease) -> Message:
    """A trained reply: the DP tensors and the public metadata, nothing else (see the module docstring)."""
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    from common.federation.rounds import Status

    content = RecordDict(
        {
            ARRAYS: arrays,
            METRICS: MetricRecord(release.metrics()),  # type: ignore[arg-type]  # Flower's invariant dict value type
            STATUS: ConfigRecord({STATE: Status.TRAINED.value}),
            LEDGER: ConfigRecord(release.ledger()),  # type: ignore[arg-type]
        }
    )
    return Message(content, reply_to=request)


def refusal_reply(request: Message, reason: str) -> Message:
    """A refusal: ``status`` alone, with a code from :data:`REFUSAL_REASONS` (the detail stays in the site's log)."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from common.federation.rounds import Status

    if reason not in REFUSAL_REASONS:
        raise ValueError(f"refusal reason must be one of {sorted(REFUSAL_REASONS)}; got {reason!r}")
    status = ConfigRecord({STATE: Status.REFUSED.value, REASON: reason})
    return Message(RecordDict({STATUS: status}), reply_to=request)


def evaluate_reply(request: Message, *, num_examples: int, metrics: Mapping[str, float]) -> Message:
    """An evaluate reply: the held-out size and the metrics the site opted in to release (NOT DP), or ``skipped``.

    With no metrics the site releases nothing: ``status`` alone, state ``skipped``.
    """
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    from common.federation.rounds import Status

    unknown = set(metrics) - RELEASABLE_METRICS
    if unknown:
        raise ValueError(f"releasable metrics are {sorted(RELEASABLE_METRICS)}; got {sorted(unknown)}")
    if not metrics:
        return Message(RecordDict({STATUS: ConfigRecord({STATE: Status.SKIPPED.value})}), reply_to=request)
    record = MetricRecord({NUM_EXAMPLES: num_examples, **metrics})
    return Message(RecordDict({METRICS: record, STATUS: ConfigRecord({STATE: Status.TRAINED.value})}), reply_to=request)


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
    import numpy as np
    import torch

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
