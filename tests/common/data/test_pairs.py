"""Prompt/response files: every bad record has its own message (file, line, rule); fingerprint; prompt rendering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.data.pairs import PairSpec, PromptResponsePairs, deduplicate_pairs, read_pairs_file
from common.data.templates import PLAIN_TEMPLATE, chat_transcript, render_prompt, template_name
from common.errors import DataValidationError
from tests.helpers import write_jsonl

ROWS = [("Add 1 and 2.", "3"), ("Say hi, politely", 'he said "hi"'), ("Uppercase: abc", "ABC")]
CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "capital of France?"},
    {"role": "assistant", "content": "Paris"},
]


def _error(path: Path, spec: PairSpec | None = None) -> str:
    with pytest.raises(DataValidationError) as info:
        read_pairs_file(path, spec)
    message = str(info.value)
    assert str(path) in message, message
    return message


def _jsonl(tmp_path: Path, *objs: object) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(obj) + "\n" for obj in objs))
    return path


def test_csv_tsv_jsonl_round_trip_to_the_same_records_and_fingerprint(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"prompt": p, "response": r} for p, r in ROWS])
    csv_path = tmp_path / "b.csv"
    quoted = ['"' + field.replace('"', '""') + '"' for row in reversed(ROWS) for field in row]
    csv_path.write_text(
        "id,response,prompt\n" + "".join(f"{i},{quoted[2 * i + 1]},{quoted[2 * i]}\n" for i in range(3))
    )
    tsv = tmp_path / "c.tsv"
    tsv.write_text("prompt\tresponse\n" + "".join(f"{p}\t{r}\n" for p, r in ROWS))
    a, b, c = read_pairs_file(jsonl), read_pairs_file(csv_path), read_pairs_file(tsv)
    assert list(zip(a.prompts, a.responses, strict=True)) == ROWS
    assert set(zip(b.prompts, b.responses, strict=True)) == set(ROWS)
    assert list(zip(c.prompts, c.responses, strict=True)) == ROWS
    assert a.turns == (None, None, None)
    assert a.fingerprint == b.fingerprint == c.fingerprint and len(a.fingerprint) == 64
    assert a.texts[0] == "Add 1 and 2.\n3"


def test_custom_columns_and_multiline_csv_field(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('q,a\n"line one\nline two",ok\n')
    data = read_pairs_file(path, PairSpec(prompt_column="q", response_column="a"))
    assert data.prompts == ("line one\nline two",) and data.responses == ("ok",)


def test_messages_records_keep_turns_and_mix_with_plain_ones(tmp_path):
    path = _jsonl(tmp_path, {"messages": CHAT, "id": 7}, {"prompt": "p", "response": "r"})
    data = read_pairs_file(path)
    assert data.turns[0] == (("system", "be brief"), ("user", "capital of France?"))
    assert data.prompts[0] == "System: be brief\nUser: capital of France?"
    assert data.responses == ("Paris", "r")
    assert data.turns[1] is None
    assert data.texts[0].endswith("\nParis")


def test_fingerprint_invariant_to_order_and_changed_by_a_response():
    base = PromptResponsePairs(prompts=("a", "b"), responses=("1", "2"), source="x")
    assert PromptResponsePairs(prompts=("b", "a"), responses=("2", "1"), source="y").fingerprint == base.fingerprint
    changed = PromptResponsePairs(prompts=("a", "b"), responses=("1", "3"), source="x")
    swapped = PromptResponsePairs(prompts=("a", "b"), responses=("2", "1"), source="x")
    assert len({base.fingerprint, changed.fingerprint, swapped.fingerprint}) == 3


def test_a_chat_record_differs_from_a_plain_record_with_its_transcript():
    turns = (("user", "hi"),)
    chat = PromptResponsePairs(prompts=(chat_transcript(turns),), responses=("yo",), source="x", turns=(turns,))
    plain = PromptResponsePairs(prompts=("User: hi",), responses=("yo",), source="x")
    assert chat.texts == plain.texts
    assert chat.fingerprint != plain.fingerprint


def test_invariants_subset_and_deduplication():
    with pytest.raises(ValueError, match="2 prompts, 1 responses"):
        PromptResponsePairs(prompts=("a", "b"), responses=("1",), source="x")
    with pytest.raises(ValueError, match="empty response"):
        PromptResponsePairs(prompts=("a",), responses=("  ",), source="x")
    with pytest.raises(ValueError, match="transcript"):
        PromptResponsePairs(prompts=("hi",), responses=("1",), source="x", turns=((("user", "hi"),),))
    data = PromptResponsePairs(prompts=("a", "b", " a "), responses=("1", "2", "1"), source="x")
    assert data.subset([2, 0]).prompts == (" a ", "a") and len(data.subset([1])) == 1
    unique, dropped = deduplicate_pairs(data)
    assert dropped == 1 and unique.prompts == ("a", "b")


@pytest.mark.parametrize(
    ("objs", "line", "rule"),
    [
        ([{"prompt": "p", "response": "r"}, {"prompt": " ", "response": "r"}], 2, "column 'prompt' is empty"),
        ([{"prompt": "p", "response": ""}], 1, "column 'response' is empty"),
        ([{"prompt": "p", "response": 3}], 1, "column 'response' must be a string; got int 3"),
        ([{"prompt": "p"}], 1, "missing column 'response' (this line has ['prompt'])"),
        ([{"text": "p"}], 1, "missing column 'prompt' and 'response', or a 'messages' list for a chat record"),
        ([{"messages": CHAT, "prompt": "p"}], 1, "has both 'messages' and 'prompt'/'response'"),
        (
            [{"messages": "hello"}],
            1,
            "column 'messages' must be a non-empty list of {'role', 'content'} turns; got str",
        ),
        ([{"messages": []}], 1, "got an empty list"),
        ([{"messages": [{"role": "user"}]}], 1, "turn 1 of 'messages' must be an object with 'role' and 'content'"),
        (
            [{"prompt": "p", "response": "r"}, {"messages": [{"role": "bot", "content": "x"}]}],
            2,
            "turn 1 has the unknown role 'bot' (allowed: 'system', 'user', 'assistant')",
        ),
        ([{"messages": CHAT[:2]}], 1, "the last turn must be the 'assistant' response; it is 'user'"),
        ([{"messages": [CHAT[0], CHAT[2]]}], 1, "no 'user' turn before the response"),
        ([{"messages": [*CHAT[:2], {"role": "assistant", "content": " "}]}], 1, "the response (last 'assistant' turn)"),
        ([{"messages": [CHAT[0], {"role": "user", "content": ""}, CHAT[2]]}], 1, "turn 2 ('user') is empty"),
        ([["p", "r"]], 1, "each line must be a JSON object; got list"),
    ],
)
def test_each_bad_jsonl_record_has_its_own_message(tmp_path, objs, line, rule):
    path = _jsonl(tmp_path, *objs)
    message = _error(path)
    assert rule in message
    assert f"{path}:{line}: " in message


def test_bad_json_and_lone_surrogate(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "response": "r"}\n{"prompt": \n')
    assert f"{path}:2: not valid JSON" in _error(path)
    path.write_text('{"prompt": "p\\udcff", "response": "r"}\n')
    assert f"{path}:1: column 'prompt' holds" in _error(path)


def test_delimited_rules(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,answer\np,r\n")
    assert f"{path}:1: missing column 'response' in the header (columns found: ['prompt', 'answer'])" in _error(path)
    path.write_text("messages,prompt\nx,y\n")
    assert "chat 'messages' records need JSON Lines" in _error(path)
    path.write_text("prompt,response\np,r\n,r\n")
    assert f"{path}:3: column 'prompt' is empty" in _error(path)
    path.write_text("prompt,response\np,r\np,r,extra\n")
    assert f"{path}:3: row has 3 fields but the header has 2" in _error(path)
    path.write_text("prompt,response\n")
    assert "holds a header but no records" in _error(path)


def test_empty_file_undecodable_bytes_and_unknown_suffix(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n  \n")
    assert "the file is empty" in _error(path)
    path.write_bytes(b'{"prompt": "p", "response": "r"}\n{"prompt": "\xff", "response": "r"}\n')
    assert f"{path}:2: bytes are not valid UTF-8 (byte 0xff" in _error(path)
    other = tmp_path / "d.txt"
    other.write_text("prompt,response\np,r\n")
    assert "cannot tell the format" in _error(other)
    assert len(read_pairs_file(other, PairSpec(format="csv"))) == 1


def test_spec_rejects_clashing_columns():
    with pytest.raises(ValueError, match="must be distinct"):
        PairSpec(prompt_column="x", response_column="x")


def _tokenizer(chat_template: str | None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "<s>": 1, "</s>": 2, "hi": 3}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = chat_template
    return tokenizer


def test_render_prompt_with_and_without_a_chat_template():
    template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    )
    turns = (("system", "be brief"), ("user", "hi"))
    with_template, without = _tokenizer(template), _tokenizer(None)
    assert render_prompt("ignored", turns, with_template) == "<|system|>be brief\n<|user|>hi\n<|assistant|>"
    assert render_prompt("ignored", turns, without) == "System: be brief\nUser: hi\nAssistant: "
    assert render_prompt("Add 1 and 2.", None, with_template) == "### Instruction:\nAdd 1 and 2.\n\n### Response:\n"
    assert render_prompt("x", None, None) == PLAIN_TEMPLATE.format(prompt="x")
    assert template_name(turns, with_template) == "chat-template"
    assert template_name(turns, without) == template_name(None, with_template) == "plain"


@pytest.mark.parametrize(
    "messages",
    [
        "hello",
        [{"role": "user"}],
        [{"role": "bot", "content": "x"}],
        [CHAT[0], {"role": "user", "content": ""}, CHAT[2]],
        [*CHAT[:2], {"role": "assistant", "content": 3}],
        [CHAT[0], CHAT[2]],
    ],
)
def test_training_and_generation_refuse_a_bad_chat_with_the_same_message(tmp_path, messages):
    from common.data.prompts import read_prompts_file

    path = _jsonl(tmp_path, {"messages": messages})
    with pytest.raises(DataValidationError) as prompts_error:
        read_prompts_file(path)
    assert _error(path) == str(prompts_error.value)
