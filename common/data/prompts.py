"""Prompts to generate from (``fedtune generate --data``): a prompt column, or JSON Lines chat records.

A record is either a plain prompt (the ``prompt`` column of a CSV, TSV or JSON Lines file) or, in JSON Lines, a
chat: a ``messages`` list of ``{"role": "system"|"user"|"assistant", "content"}`` turns, validated exactly as
training validates them (:mod:`common.data.fields`: known roles, non-empty contents, at least one user turn).

A chat that ends with an ``assistant`` turn is a training or evaluation record: that last turn is its reference
answer, and it is dropped, so the model is asked for the answer rather than shown it, and a training file can be
generated from as it is. A chat that ends with any other turn is all prompt. Either way the prompt turns are what
training took as the prompt of a record, so :func:`render_as_trained` renders them as training rendered them.

Read and validated like training data (regular files only, bounded lines, UTF-8, one error naming file, line and
rule); other columns are ignored, so a prompt/response file can be generated from as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.data.fields import ChatTurns, checked_text, read_chat
from common.data.pairs import PairSpec, chat_hint
from common.data.readers import json_objects, read_records, table_rows
from common.data.spec import DataFormat
from common.data.templates import CHAT_TEMPLATE, chat_transcript, has_chat_template, render_prompt
from common.errors import DataValidationError, ModelError

#: One prompt as read: its text (a chat's transcript) and its chat turns (None for a plain prompt).
_Prompt = tuple[str, ChatTurns | None]


@dataclass(frozen=True)
class Prompts:
    """Non-empty prompts, in file order.

    ``turns[i]`` is None for a plain prompt, or the prompt turns of a chat record; then ``prompts[i]`` is their
    :func:`~common.data.templates.chat_transcript`. ``turns`` defaults to all plain.
    """

    prompts: tuple[str, ...]
    source: str
    turns: tuple[ChatTurns | None, ...] = ()

    def __post_init__(self) -> None:
        if not self.turns and self.prompts:
            object.__setattr__(self, "turns", (None,) * len(self.prompts))
        if len(self.prompts) != len(self.turns):
            raise ValueError(f"{len(self.prompts)} prompts but {len(self.turns)} turns")
        for i, (prompt, turns) in enumerate(zip(self.prompts, self.turns, strict=True)):
            if turns is not None and prompt != chat_transcript(turns):
                raise ValueError(f"prompt {i}: the prompt of a chat record must be the transcript of its turns")

    def __len__(self) -> int:
        return len(self.prompts)


def read_prompts_file(path: str | Path, spec: PairSpec | None = None) -> Prompts:
    """The prompt of every record of ``path``: ``spec.prompt_column``, or ``spec.messages_column`` chats (JSONL)."""
    spec = spec or PairSpec()
    path = Path(path)
    where = str(path)

    def parse(lines: Iterator[str], data_format: DataFormat) -> list[_Prompt]:
        if data_format == "jsonl":
            return _from_jsonl(lines, where, spec)
        return _from_delimited(lines, where, spec, data_format)

    found = read_records(path, spec.format, spec.max_line_bytes, parse)
    if not found:
        raise DataValidationError("the file holds no prompts", path=where)
    prompts, turns = zip(*found, strict=True)
    return Prompts(prompts=prompts, source=where, turns=turns)


def render_as_trained(prompts: Prompts, tokenizer: Any, *, template: str | None, adapter: str) -> list[str]:
    """Each prompt as training rendered the prompt of such a record (:func:`~common.data.templates.render_prompt`).

    ``template`` is the one recorded with the adapter (``fedtune_model.json``). An adapter trained on chats rendered
    by the tokenizer's chat template cannot be asked with a tokenizer (e.g. another ``--model``) that has none:
    its chats would be rendered in fedtune's plain transcript instead, a format the adapter never saw.
    """
    chats = any(turns is not None for turns in prompts.turns)
    if chats and template == CHAT_TEMPLATE and not has_chat_template(tokenizer):
        raise ModelError(
            f"{adapter}: the adapter was trained on chats rendered with the tokenizer's chat template, but this "
            f"base model's tokenizer has none; use the base model it was trained with"
        )
    return [render_prompt(text, turns, tokenizer) for text, turns in zip(prompts.prompts, prompts.turns, strict=True)]


def _from_jsonl(lines: Iterator[str], where: str, spec: PairSpec) -> list[_Prompt]:
    column, messages, limit = spec.prompt_column, spec.messages_column, spec.max_line_bytes
    found: list[_Prompt] = []
    for number, obj in json_objects(lines, where):
        if messages in obj and column in obj:
            raise DataValidationError(
                f"the line has both {messages!r} and {column!r}; a record is either a chat or a prompt",
                path=where,
                line=number,
            )
        if messages in obj:
            chat = read_chat(obj[messages], messages, where, number, limit, response_required=False)
            found.append((chat.transcript, chat.prompt_turns))
        elif column in obj:
            found.append((checked_text(obj[column], f"column {column!r}", where, number, limit), None))
        else:
            raise DataValidationError(
                f"missing column {column!r}, or a {messages!r} list for a chat record (this line has {sorted(obj)})",
                path=where,
                line=number,
            )
    return found


def _from_delimited(lines: Iterator[str], where: str, spec: PairSpec, data_format: DataFormat) -> list[_Prompt]:
    column, limit = spec.prompt_column, spec.max_line_bytes
    header, rows = table_rows(lines, data_format, where, (column,), hint=chat_hint(spec))
    at = header.index(column)
    return [(checked_text(row[at], f"column {column!r}", where, number, limit), None) for number, row in rows]
