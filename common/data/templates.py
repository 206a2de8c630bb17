"""How a prompt becomes the text a causal language model is trained on and asked to continue.

Generative fine-tuning trains on ``render_prompt(...) + response`` (the loss on the response tokens only) and, at
inference, asks the model to continue ``render_prompt(...)``. Both sides must render a prompt identically, so the
rendering is fixed here and named by a :data:`TemplateName` recorded with the adapter:

* ``"chat-template"``: a chat record (a list of turns) rendered by the tokenizer's own chat template
  (``tokenizer.apply_chat_template``), the format an instruction-tuned base model already knows.
* ``"plain"``: this module's fixed formats, independent of the tokenizer: :data:`PLAIN_TEMPLATE` for a plain prompt,
  and "Role: content" lines followed by ``"Assistant: "`` (:func:`chat_transcript`) for a chat record when the
  tokenizer has no chat template.

All functions are pure: same inputs, same text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal

#: The roles a chat turn may have; the last turn of a chat record is the assistant's response.
ROLES: Final = ("system", "user", "assistant")

#: The plain instruction template (Alpaca style). The response follows the final newline directly, so a model
#: trained on ``PLAIN_TEMPLATE.format(prompt=p) + response`` learns to answer after "### Response:".
PLAIN_TEMPLATE: Final = "### Instruction:\n{prompt}\n\n### Response:\n"

#: The prefix a model continues after a chat transcript rendered without a chat template.
ASSISTANT_PREFIX: Final = "Assistant: "

TemplateName = Literal["chat-template", "plain"]
CHAT_TEMPLATE: Final[TemplateName] = "chat-template"
PLAIN: Final[TemplateName] = "plain"
TEMPLATE_NAMES: Final[tuple[TemplateName, ...]] = (CHAT_TEMPLATE, PLAIN)

#: One chat turn: (role, content).
Turn = tuple[str, str]


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a chat template (a non-empty ``chat_template``) to render chat turns with."""
    return bool(getattr(tokenizer, "chat_template", None))


def template_name(turns: Sequence[Turn] | None, tokenizer: Any) -> TemplateName:
    """The :data:`TemplateName` :func:`render_prompt` uses for a record with these ``turns`` and ``tokenizer``."""
    return CHAT_TEMPLATE if turns is not None and has_chat_template(tokenizer) else PLAIN


def chat_transcript(turns: Sequence[Turn]) -> str:
    r"""``turns`` as "Role: content" lines joined by newlines, e.g. ``"System: be brief\nUser: hi"``.

    This is the text a chat prompt is identified by (``PromptResponsePairs.prompts``), and, followed by a newline
    and :data:`ASSISTANT_PREFIX`, how it is rendered for a tokenizer without a chat template.
    """
    return "\n".join(f"{role.capitalize()}: {content}" for role, content in turns)


def render_prompt(prompt: str, turns: Sequence[Turn] | None, tokenizer: Any) -> str:
    r"""The text the model continues with the response, for one record.

    * Chat record (``turns`` is not None) and a tokenizer with a chat template: the template applied to the turns
      with ``add_generation_prompt=True``, so the text ends where the assistant's reply begins. Such a template may
      already hold special tokens (e.g. a BOS): tokenize the result with ``add_special_tokens=False``.
    * Chat record, no chat template: :func:`chat_transcript` then ``"\nAssistant: "``.
    * Plain record (``turns`` is None): :data:`PLAIN_TEMPLATE` around ``prompt``, whatever the tokenizer.

    A plain prompt is not wrapped in the chat template: the plain format is then the same for every base model,
    and a chat record is the explicit way to ask for the model's own format.
    """
    if turns is None:
        return PLAIN_TEMPLATE.format(prompt=prompt)
    if has_chat_template(tokenizer):
        messages = [{"role": role, "content": content} for role, content in turns]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not isinstance(rendered, str):
            raise TypeError(f"apply_chat_template(tokenize=False) returned {type(rendered).__name__}, not str")
        return rendered
    return f"{chat_transcript(turns)}\n{ASSISTANT_PREFIX}"


def render_prompts(prompts: Sequence[str], turns: Sequence[Sequence[Turn] | None], tokenizer: Any) -> list[str]:
    """:func:`render_prompt` of each record (``prompts[i]`` with ``turns[i]``), e.g. a ``PromptResponsePairs``'."""
    return [render_prompt(prompt, record_turns, tokenizer) for prompt, record_turns in zip(prompts, turns, strict=True)]
