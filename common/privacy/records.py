"""The privacy ledger's on-disk records.

A ledger is a JSON Lines file of immutable records (status changes are new records, never edits):

* :class:`HeaderRecord` (line 1): the ledger's identity and, optionally, the Ed25519 key that signs every record.
* :class:`UpgradeRecord`: the ledger keeps per-RECORD budgets from here on (schema ``fedtune-ledger/2``), with the
  records identified by a keyed hash under the site's record key, whose id it commits to. New ledgers have it at
  seq 1; a ledger written before it existed gets it appended on first use, and keeps verifying.
* :class:`RecordSetRecord`: a set of record ids, content-addressed (``set_id`` is the sha256 of the sorted ids),
  stored whole or as a difference from an earlier set, so that 50 events on a dataset of 100,000 records cost one
  set, and a dataset that grows costs only what it added.
* :class:`AttributeRecord`: a legacy event's dataset (by its v1 content fingerprint) was this record set.
* :class:`ReserveRecord`: a privacy-consuming act about to happen (written BEFORE training), charged to a record
  set (``record_set``; legacy reserves have none and are charged to every record unless attributed). Its optional
  ``purpose`` says what the act was: training (absent or ``train``) or a noisy label-histogram release
  (``label-histogram``, :mod:`common.privacy.histogram`).
* :class:`CommitRecord`: that act finished.

Every record carries ``seq`` (its position), ``prev_hash`` and ``hash`` (:mod:`common.privacy.chain` says how it is
computed: v1 before the upgrade record, v2 from it on) and optionally a ``signature`` of the hash. No record stores
epsilon: spend is recomputed from the mechanisms.

Evolution rules (as dp_accounting's events): record types and fields are never removed and never change meaning; a
new field is optional and absent from older records, and hashing leaves it out when unset (``chain.V2_FIELDS``, or
the field's own ``exclude_if``, as for ``ReserveRecord.purpose``).
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from common.privacy.chain import canonical_json, payload
from common.privacy.events import MECHANISM, DpSgdEvent

SCHEMA_V1: Literal["fedtune-ledger/1"] = "fedtune-ledger/1"
SCHEMA_V2: Literal["fedtune-ledger/2"] = "fedtune-ledger/2"
NON_PRIVATE = "non-private"
#: What a reserved act was: DP-SGD training, or a Gaussian-noised label histogram (same mechanism, q = 1, 1 step).
Purpose = Literal["train", "label-histogram"]
LABEL_HISTOGRAM: Purpose = "label-histogram"
_DIGEST = r"^[0-9a-f]{64}$"


class BaseRecord(BaseModel):
    """What every line has: its position, the chain link, its hash, an optional signature, when it was written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seq: int = Field(ge=0)
    prev_hash: str = Field(pattern=_DIGEST)
    hash: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")
    signature: str | None = None
    created_at: str


class HeaderRecord(BaseRecord):
    """First line: the ledger's identity, schema and (optionally) the public key that signs every record."""

    type: Literal["header"] = "header"
    schema_version: Literal["fedtune-ledger/1", "fedtune-ledger/2"] = SCHEMA_V2
    ledger_id: str
    public_key: str | None = None  # base64 raw Ed25519 public key


class UpgradeRecord(BaseRecord):
    """Per-record budgets from here on; records are identified under the record key ``record_key_id`` names."""

    type: Literal["upgrade"] = "upgrade"
    schema_version: Literal["fedtune-ledger/2"] = SCHEMA_V2
    record_key_id: str = Field(pattern=_DIGEST)


class RecordSetRecord(BaseRecord):
    """A set of record ids (16 bytes each, sorted), whole (``ids``) or as ``base`` plus ``added`` minus ``removed``.

    ``set_id`` is the sha256 of the sorted ids' bytes, checked when the ledger is read; ``count`` their number.
    Id blobs are base64 of the concatenated ids.
    """

    type: Literal["records"] = "records"
    set_id: str = Field(pattern=_DIGEST)
    count: int = Field(ge=1)
    ids: str | None = None
    base: str | None = Field(default=None, pattern=_DIGEST)
    added: str | None = None
    removed: str | None = None

    @model_validator(mode="after")
    def _one_encoding(self) -> RecordSetRecord:
        whole = self.ids is not None
        delta = self.base is not None
        if whole == delta or (whole and (self.added or self.removed)):
            raise ValueError("a record set is either whole (ids) or a difference (base, added, removed)")
        return self


class AttributeRecord(BaseRecord):
    """Legacy events of the v1 dataset fingerprint ``legacy_fingerprint`` covered exactly the set ``record_set``."""

    type: Literal["attribute"] = "attribute"
    legacy_fingerprint: str = Field(pattern=_DIGEST)
    record_set: str = Field(pattern=_DIGEST)


class ReserveRecord(BaseRecord):
    """A privacy-consuming act on a set of records, reserved (and counted as spent) before it happens.

    ``mechanism`` is DP-SGD with Poisson subsampling under add/remove adjacency, described by (noise_multiplier,
    sample_rate, steps, max_grad_norm); or ``non-private`` (infinite epsilon), recorded so that records once trained
    on without privacy can never again look private. ``record_set`` names the records it covers (absent in legacy
    reserves, whose ``dataset_fingerprint`` is the v1 content fingerprint of the dataset). ``purpose`` (absent:
    training) tells an auditor what the act released.
    """

    type: Literal["reserve"] = "reserve"
    event_id: str
    dataset_id: str
    dataset_fingerprint: str = Field(pattern=_DIGEST)
    record_set: str | None = Field(default=None, pattern=_DIGEST)
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
    #: None (older records, and training): ``train``. Left out of the stored line and its hash when unset.
    purpose: Purpose | None = Field(default=None, exclude_if=lambda value: value is None)

    def dp_event(self) -> DpSgdEvent | None:
        """The DP-SGD event this record charges, or None for a non-private act (infinite epsilon)."""
        if self.mechanism == NON_PRIVATE:
            return None
        assert self.noise_multiplier is not None and self.sample_rate is not None  # _mechanism_parameters
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


class CommitRecord(BaseRecord):
    """The reserved act ``event_id`` completed (its update may now leave the site)."""

    type: Literal["commit"] = "commit"
    event_id: str
    examples_seen: int | None = Field(default=None, ge=0)
    empty_batches: int | None = Field(default=None, ge=0)


#: Any one line of a ledger (for annotations); :data:`LedgerRecord` adds the discriminator that parsing uses.
AnyRecord = HeaderRecord | UpgradeRecord | RecordSetRecord | AttributeRecord | ReserveRecord | CommitRecord
LedgerRecord = Annotated[AnyRecord, Field(discriminator="type")]
RECORD_ADAPTER: TypeAdapter[AnyRecord] = TypeAdapter(LedgerRecord)


def encode_record(record: BaseModel) -> str:
    """The record's line in the ledger file (without the newline)."""
    return canonical_json(payload(record))


def timestamp() -> str:
    """A record's ``created_at``: the current UTC time, ISO 8601 with microseconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")
