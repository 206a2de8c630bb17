"""Prompt/response pairs for generative fine-tuning: the dataset, its fingerprint and the file reader.

A file is CSV, TSV or JSON Lines with a prompt and a response column, or (JSON Lines only) a ``messages`` column:
a list of ``{"role": "system"|"user"|"assistant", "content": str}`` turns whose last turn is the assistant's
response and whose earlier turns (at least one from the user) are the prompt. The reader shares the labelled
reader's guarantees (:mod:`common.data.readers`): streaming, bounded lines, one
:class:`~common.errors.DataValidationError` per problem naming the file, the line and the rule, and the whole file
checked before a dataset is returned.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.data.dedupe import first_occurrences
from common.data.fields import ChatTurns, checked_text, read_chat
from common.data.readers import json_objects, read_records, table_rows
from common.data.spec import DEFAULT_MAX_LINE_BYTES, MAX_LINE_BYTES_LIMIT, DataFormat, utf8_problem
from common.data.templates import ROLES, chat_transcript
from common.errors import DataValidationError

_FINGERPRINT_VERSION = b"fedtune-pairs-v1"


@dataclass(frozen=True)
class PromptResponsePairs:
    """Prompts with the responses a model should learn to give.

    ``turns[i]`` is None for a plain record, or the chat turns before the response for a chat record; then
    ``prompts[i]`` is their :func:`~common.data.templates.chat_transcript`. ``turns`` defaults to all plain.
    Invariants: equal lengths, no blank prompt or response, chat turns non-empty with known roles.
    """

    prompts: tuple[str, ...]
    responses: tuple[str, ...]
    source: str
    turns: tuple[ChatTurns | None, ...] = ()

    def __post_init__(self) -> None:
        if not self.turns and self.prompts:
            object.__setattr__(self, "turns", (None,) * len(self.prompts))
        if not len(self.prompts) == len(self.responses) == len(self.turns):
            raise ValueError(f"{len(self.prompts)} prompts, {len(self.responses)} responses, {len(self.turns)} turns")
        for i, (prompt, response, turns) in enumerate(zip(self.prompts, self.responses, self.turns, strict=True)):
            if not prompt.strip() or not response.strip():
                raise ValueError(f"record {i} has an empty {'prompt' if not prompt.strip() else 'response'}")
            if turns is not None and (not turns or any(role not in ROLES for role, _ in turns)):
                raise ValueError(f"record {i} has no turns or a role outside {ROLES}")
            if turns is not None and prompt != chat_transcript(turns):
                raise ValueError(f"record {i}: the prompt of a chat record must be the transcript of its turns")

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, indices: Sequence[int], *, source: str | None = None) -> PromptResponsePairs:
        """The records at ``indices``, in that order."""
        return PromptResponsePairs(
            prompts=tuple(self.prompts[i] for i in indices),
            responses=tuple(self.responses[i] for i in indices),
            source=source if source is not None else self.source,
            turns=tuple(self.turns[i] for i in indices),
        )

    @property
    def texts(self) -> tuple[str, ...]:
        """What each record is identified by in the privacy ledger: prompt, newline, response (what is trained on)."""
        return tuple(f"{p}\n{r}" for p, r in zip(self.prompts, self.responses, strict=True))

    @cached_property
    def fingerprint(self) -> str:
        """Hex sha256 of the record multiset: invariant to row order and file format, changed by any record.

        A chat record is hashed by its turns (roles and contents), so it never equals a plain record whose prompt
        happens to read like its transcript: the two are rendered, hence trained, differently.
        """
        digests = sorted(
            _record_digest(p, r, t) for p, r, t in zip(self.prompts, self.responses, self.turns, strict=True)
        )
        outer = hashlib.sha256(_FINGERPRINT_VERSION)
        outer.update(len(digests).to_bytes(8, "big"))
        for digest in digests:
            outer.update(digest)
        return outer.hexdigest()


def _record_digest(prompt: str, response: str, turns: ChatTurns | None) -> bytes:
    key = b"p" + prompt.encode() if turns is None else b"c" + json.dumps(turns, ensure_ascii=False).encode()
    return hashlib.sha256(len(key).to_bytes(8, "big") + key + b"\x00" + response.encode()).digest()


def deduplicate_pairs(pairs: PromptResponsePairs) -> tuple[PromptResponsePairs, int]:
    """``pairs`` with one record per normalised :attr:`~PromptResponsePairs.texts` (the first), and the drop count.

    Why: see :mod:`common.data.dedupe` (a repeated record costs the privacy of a group).
    """
    keep = first_occurrences(pairs.texts)
    return (pairs, 0) if len(keep) == len(pairs) else (pairs.subset(keep), len(pairs) - len(keep))


class PairSpec(BaseModel):
    """Frozen description of a prompt/response file's layout (the generative counterpart of ``DataSpec``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: DataFormat = "auto"
    prompt_column: str = Field(default="prompt", min_length=1)
    response_column: str = Field(default="response", min_length=1)
    messages_column: str = Field(default="messages", min_length=1)
    max_line_bytes: int = Field(default=DEFAULT_MAX_LINE_BYTES, gt=0, le=MAX_LINE_BYTES_LIMIT)

    @field_validator("prompt_column", "response_column", "messages_column", mode="before")
    @classmethod
    def _utf8_column(cls, value: Any) -> Any:
        problem = utf8_problem(value) if isinstance(value, str) else None
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _distinct_columns(self) -> PairSpec:
        columns = (self.prompt_column, self.response_column, self.messages_column)
        if len(set(columns)) != 3:
            raise ValueError(f"prompt, response and messages columns must be distinct; got {list(columns)}")
        return self


#: One record as read: (prompt, response, chat turns or None).
_Record = tuple[str, str, ChatTurns | None]


def _bad(where: str, line: int, rule: str) -> DataValidationError:
    return DataValidationError(rule, path=where, line=line)


def read_pairs_file(path: str | Path, spec: PairSpec | None = None) -> PromptResponsePairs:
    """Read and validate one prompt/response file (see the module docstring for the layouts)."""
    spec = spec or PairSpec()
    path = Path(path)
    where = str(path)

    def parse(lines: Iterator[str], data_format: DataFormat) -> list[_Record]:
        if data_format == "jsonl":
            return _parse_jsonl(lines, where, spec)
        return _parse_delimited(lines, where, spec, data_format)

    records = read_records(path, spec.format, spec.max_line_bytes, parse)
    if not records:
        raise DataValidationError("the file holds a header but no records", path=where)
    prompts, responses, turns = zip(*records, strict=True)
    return PromptResponsePairs(prompts=prompts, responses=responses, source=where, turns=turns)


def _parse_jsonl(lines: Iterable[str], where: str, spec: PairSpec) -> list[_Record]:
    records: list[_Record] = []
    limit = spec.max_line_bytes
    plain = (spec.prompt_column, spec.response_column)
    for number, obj in json_objects(lines, where):
        has_plain = any(column in obj for column in plain)
        if has_plain and spec.messages_column in obj:
            raise _bad(
                where,
                number,
                f"the line has both {spec.messages_column!r} and {spec.prompt_column!r}/{spec.response_column!r}; "
                "a record is either a chat or a prompt/response pair",
            )
        if spec.messages_column in obj:
            records.append(_chat_record(obj[spec.messages_column], spec.messages_column, where, number, limit))
            continue
        missing = [column for column in plain if column not in obj] if has_plain else list(plain)
        if missing:
            alternative = "" if has_plain else f", or a {spec.messages_column!r} list for a chat record"
            raise _bad(
                where,
                number,
                f"missing column {' and '.join(map(repr, missing))}{alternative} (this line has {sorted(obj)})",
            )
        prompt = checked_text(obj[spec.prompt_column], f"column {spec.prompt_column!r}", where, number, limit)
        response = checked_text(obj[spec.response_column], f"column {spec.response_column!r}", where, number, limit)
        records.append((prompt, response, None))
    return records


def _chat_record(messages: object, column: str, where: str, line: int, limit: int) -> _Record:
    chat = read_chat(messages, column, where, line, limit, response_required=True)
    assert chat.response is not None  # response_required
    return (chat.transcript, chat.response, chat.prompt_turns)


def _parse_delimited(lines: Iterator[str], where: str, spec: PairSpec, data_format: DataFormat) -> list[_Record]:
    required = (spec.prompt_column, spec.response_column)
    header, rows = table_rows(lines, data_format, where, required, hint=chat_hint(spec))
    prompt_at, response_at = header.index(spec.prompt_column), header.index(spec.response_column)
    records: list[_Record] = []
    limit = spec.max_line_bytes
    for number, row in rows:
        prompt = checked_text(row[prompt_at], f"column {spec.prompt_column!r}", where, number, limit)
        response = checked_text(row[response_at], f"column {spec.response_column!r}", where, number, limit)
        records.append((prompt, response, None))
    return records


def chat_hint(spec: PairSpec) -> Callable[[list[str]], str]:
    """The missing-column hint for a CSV/TSV header that names the messages column: chats need JSON Lines."""
    return lambda header: (
        f"; chat {spec.messages_column!r} records need JSON Lines" if spec.messages_column in header else ""
    )
