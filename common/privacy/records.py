"""The privacy ledger's on-disk records and their canonical, hash-chained encoding.

A ledger is a JSON Lines file. Line 1 is a :class:`HeaderRecord`; every later line is a :class:`ReserveRecord`
(a privacy-consuming act about to happen, written BEFORE training) or a :class:`CommitRecord` (that act finished).
Records are immutable: status changes are new records, never edits.

Every record carries ``seq`` (its 0-based position), ``prev_hash`` (the previous record's hash) and ``hash``, the
sha256 of its canonical JSON without ``hash`` and ``signature``; optionally an Ed25519 ``signature`` of that hash.
Any edited, deleted, reordered or inserted line therefore breaks the chain at a nameable record.

No record stores epsilon: spend is always recomputed from the reserve records' mechanisms.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from common.privacy.events import MECHANISM, DpSgdEvent

SCHEMA: Literal["fedtune-ledger/1"] = "fedtune-ledger/1"
GENESIS_HASH = "0" * 64
NON_PRIVATE = "non-private"


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int = Field(ge=0)
    prev_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    hash: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    signature: str | None = None
    created_at: str


class HeaderRecord(_Record):
    """First line: the ledger's identity, schema and (optionally) the public key that signs every record."""

    type: Literal["header"] = "header"
    schema_version: Literal["fedtune-ledger/1"] = SCHEMA
    ledger_id: str
    public_key: str | None = None  # base64 raw Ed25519 public key


class ReserveRecord(_Record):
    """A privacy-consuming act on one dataset, reserved (and counted as spent) before it happens.

    ``mechanism`` is DP-SGD with Poisson subsampling under add/remove adjacency, described by (noise_multiplier,
    sample_rate, steps, max_grad_norm); or ``non-private`` (infinite epsilon), recorded so that a dataset once
    trained on without privacy can never again look private.
    """

    type: Literal["reserve"] = "reserve"
    event_id: str
    dataset_id: str
    dataset_fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    run_id: str
    round: int = Field(ge=0)
    mechanism: Literal["dpsgd-poisson-gaussian/add-remove", "non-private"]
    noise_multiplier: float | None = None
    sample_rate: float | None = None
    steps: int | None = None
    max_grad_norm: float | None = None
    delta: float = Field(gt=0.0, lt=1.0)
    limit_epsilon: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)  # None: no limit
    accountant: Literal["prv", "rdp"]

    def dp_event(self) -> DpSgdEvent | None:
        """The DP-SGD event this record charges, or None for a non-private act (infinite epsilon)."""
        if self.mechanism == NON_PRIVATE:
            return None
        assert self.noise_multiplier is not None and self.sample_rate is not None
        assert self.steps is not None and self.max_grad_norm is not None
        return DpSgdEvent(
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps,
            max_grad_norm=self.max_grad_norm,
        )

    @model_validator(mode="after")
    def _mechanism_parameters(self) -> ReserveRecord:
        parameters = ("noise_multiplier", "sample_rate", "steps", "max_grad_norm")
        if self.mechanism == MECHANISM:
            missing = [name for name in parameters if getattr(self, name) is None]
            if missing:
                raise ValueError(f"a DP-SGD reservation needs {', '.join(missing)}")
            self.dp_event()  # validates the parameters' domains
        elif any(getattr(self, name) is not None for name in parameters):
            raise ValueError("a non-private reservation has no mechanism parameters")
        return self


class CommitRecord(_Record):
    """The reserved act ``event_id`` completed (its update may now leave the site)."""

    type: Literal["commit"] = "commit"
    event_id: str
    examples_seen: int | None = Field(default=None, ge=0)
    empty_batches: int | None = Field(default=None, ge=0)


#: Any one line of a ledger (for annotations); :data:`LedgerRecord` adds the discriminator that parsing uses.
AnyRecord = HeaderRecord | ReserveRecord | CommitRecord
LedgerRecord = Annotated[AnyRecord, Field(discriminator="type")]
RECORD_ADAPTER: TypeAdapter[AnyRecord] = TypeAdapter(LedgerRecord)


def canonical_json(payload: dict[str, Any]) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept (the bytes that are hashed and stored)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def record_hash(record: BaseModel) -> str:
    """sha256 of the record's canonical JSON without its ``hash`` and ``signature``."""
    payload = record.model_dump(mode="json", exclude={"hash", "signature"})
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def encode_record(record: BaseModel) -> str:
    """The record's line in the ledger file (without the newline)."""
    return canonical_json(record.model_dump(mode="json"))


def timestamp() -> str:
    """A record's ``created_at``: the current UTC time, ISO 8601 with microseconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
