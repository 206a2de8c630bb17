"""Validation of one record's fields, shared by every reader of prompts and chats.

A text field must be a non-empty string of valid Unicode under a byte limit; a chat field (``messages``) must be a
non-empty list of ``{"role", "content"}`` turns with known roles and text contents. Training data
(:mod:`common.data.pairs`) and prompts to generate from (:mod:`common.data.prompts`) validate with these same
functions, so a record is accepted or refused, with the same message, whichever command reads it. Every failure
is a :class:`~common.errors.DataValidationError` naming the file, the line and the rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from common.data.templates import ROLES, Turn, chat_transcript
from common.errors import DataValidationError

#: The turns of a chat record, in order.
ChatTurns = tuple[Turn, ...]


def check_unicode(value: str, what: str, where: str, line: int | None) -> None:
    r"""Refuse a string holding a lone surrogate (e.g. from the JSON escape ``"\udcff"``): no UTF-8 file holds it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise DataValidationError(
            f"{what} holds {value[exc.start]!r}, a lone surrogate that is not valid Unicode text", path=where, line=line
        ) from None


def checked_text(value: object, what: str, where: str, line: int, limit: int) -> str:
    """``value`` if it is a non-blank, valid Unicode string of at most ``limit`` UTF-8 bytes; ``what`` names it."""
    if not isinstance(value, str):
        raise DataValidationError(
            f"{what} must be a string; got {type(value).__name__} {value!r}", path=where, line=line
        )
    if not value.strip():
        raise DataValidationError(f"{what} is empty", path=where, line=line)
    check_unicode(value, what, where, line)
    if len(value.encode()) > limit:
        raise DataValidationError(f"{what} is over the limit of {limit:,} bytes", path=where, line=line)
    return value


@dataclass(frozen=True)
class Chat:
    """A validated chat record: the turns that make the prompt, and the assistant's response if there was one.

    Invariant: ``prompt_turns`` is non-empty, holds at least one ``user`` turn, and every role is in ``ROLES``.
    """

    prompt_turns: ChatTurns
    response: str | None

    @property
    def transcript(self) -> str:
        """The text the prompt is identified by (:func:`~common.data.templates.chat_transcript`)."""
        return chat_transcript(self.prompt_turns)


def checked_turns(messages: object, column: str, where: str, line: int, limit: int) -> ChatTurns:
    """The turns of a ``messages`` value: a non-empty list of objects with a known role and a non-empty content.

    A last turn from the assistant is named "the response" in messages (what training learns, or the reference
    answer that generation leaves out).
    """
    if not isinstance(messages, list) or not messages:
        got = "an empty list" if isinstance(messages, list) else type(messages).__name__
        raise DataValidationError(
            f"column {column!r} must be a non-empty list of {{'role', 'content'}} turns; got {got}",
            path=where,
            line=line,
        )
    turns: list[Turn] = []
    for index, turn in enumerate(messages, start=1):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise DataValidationError(
                f"turn {index} of {column!r} must be an object with 'role' and 'content'; got {turn!r}",
                path=where,
                line=line,
            )
        role = turn["role"]
        if role not in ROLES:
            allowed = ", ".join(map(repr, ROLES))
            raise DataValidationError(
                f"turn {index} has the unknown role {role!r} (allowed: {allowed})", path=where, line=line
            )
        last_answer = index == len(messages) and role == "assistant"
        what = "the response (last 'assistant' turn)" if last_answer else f"turn {index} ({role!r})"
        turns.append((role, checked_text(turn["content"], what, where, line, limit)))
    return tuple(turns)


def split_chat(turns: Sequence[Turn], where: str, line: int, *, response_required: bool) -> Chat:
    """``turns`` as a prompt and a response: a last ``assistant`` turn is the response, the turns before it the prompt.

    ``response_required`` (training data): the last turn must be the assistant's. Otherwise (prompts to generate
    from) a chat may end with any other turn, and then all its turns are the prompt. Either way the prompt needs a
    ``user`` turn: without one there is nothing to respond to.
    """
    has_response = bool(turns) and turns[-1][0] == "assistant"
    if response_required and not has_response:
        it_is = turns[-1][0] if turns else "missing"
        raise DataValidationError(
            f"the last turn must be the 'assistant' response; it is {it_is!r}", path=where, line=line
        )
    prompt_turns = tuple(turns[:-1] if has_response else turns)
    if not any(role == "user" for role, _ in prompt_turns):
        before = " before the response" if has_response else ""
        raise DataValidationError(f"no 'user' turn{before}: nothing to respond to", path=where, line=line)
    return Chat(prompt_turns=prompt_turns, response=turns[-1][1] if has_response else None)


def read_chat(messages: object, column: str, where: str, line: int, limit: int, *, response_required: bool) -> Chat:
    """A ``messages`` value checked (:func:`checked_turns`) and split into prompt and response (:func:`split_chat`)."""
    return split_chat(
        checked_turns(messages, column, where, line, limit), where, line, response_required=response_required
    )
