"""Prompts to generate from: plain prompt columns and chat records, validated and rendered as training does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.data.pairs import PairSpec, read_pairs_file
from common.data.prompts import Prompts, read_prompts_file, render_as_trained
from common.data.templates import PLAIN_TEMPLATE, render_prompt, template_name
from common.errors import DataValidationError, ModelError
from tests.helpers import write_jsonl

SYSTEM = {"role": "system", "content": "be brief"}
USER = {"role": "user", "content": "capital of France?"}
ANSWER = {"role": "assistant", "content": "Paris"}
TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _jsonl(tmp_path: Path, *objs: object) -> Path:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(obj) + "\n" for obj in objs))
    return path


def _error(path: Path, spec: PairSpec | None = None) -> str:
    with pytest.raises(DataValidationError) as info:
        read_prompts_file(path, spec)
    return str(info.value)


def _tokenizer(chat_template: str | None):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab={"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    tokenizer.chat_template = chat_template
    return tokenizer


def test_plain_prompts_from_jsonl_csv_and_tsv_other_columns_ignored(tmp_path):
    jsonl = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "Add 1 and 2.", "response": "3", "id": 1}])
    csv_path = tmp_path / "b.csv"
    csv_path.write_text('id,prompt\n1,"line one\nline two"\n')
    tsv = tmp_path / "c.tsv"
    tsv.write_text('prompt\tx\nsay "hi"\t1\n')
    assert read_prompts_file(jsonl).prompts == ("Add 1 and 2.",)
    assert read_prompts_file(jsonl).turns == (None,)
    assert read_prompts_file(csv_path).prompts == ("line one\nline two",)
    assert read_prompts_file(tsv).prompts == ('say "hi"',)


def test_a_chat_ending_with_the_assistant_drops_that_turn_as_the_reference_answer(tmp_path):
    path = _jsonl(tmp_path, {"messages": [SYSTEM, USER, ANSWER]}, {"messages": [SYSTEM, USER]}, {"prompt": "p"})
    prompts = read_prompts_file(path)
    expected = (("system", "be brief"), ("user", "capital of France?"))
    assert prompts.turns == (expected, expected, None)  # with or without the answer: the same prompt
    assert prompts.prompts == ("System: be brief\nUser: capital of France?",) * 2 + ("p",)


def test_a_training_file_gives_the_prompts_training_rendered(tmp_path):
    rows = [{"messages": [SYSTEM, USER, ANSWER]}, {"prompt": "Add 1 and 2.", "response": "3"}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    pairs, prompts = read_pairs_file(path), read_prompts_file(path)
    assert prompts.prompts == pairs.prompts and prompts.turns == pairs.turns
    for tokenizer in (_tokenizer(TEMPLATE), _tokenizer(None)):
        trained = [render_prompt(p, t, tokenizer) for p, t in zip(pairs.prompts, pairs.turns, strict=True)]
        recorded = template_name(pairs.turns[0], tokenizer)  # what the generate job records
        assert render_as_trained(prompts, tokenizer, template=recorded, adapter="a") == trained
    assert trained[1] == PLAIN_TEMPLATE.format(prompt="Add 1 and 2.")


def test_render_prompts_with_and_without_the_chat_template():
    turns = (("system", "be brief"), ("user", "hi"))
    prompts = Prompts(prompts=("System: be brief\nUser: hi", "x"), source="s", turns=(turns, None))
    assert render_as_trained(prompts, _tokenizer(TEMPLATE), template="chat-template", adapter="a") == [
        "<|system|>be brief\n<|user|>hi\n<|assistant|>",
        PLAIN_TEMPLATE.format(prompt="x"),
    ]
    assert render_as_trained(prompts, _tokenizer(None), template="plain", adapter="a")[0] == (
        "System: be brief\nUser: hi\nAssistant: "
    )


def test_chats_for_a_chat_template_adapter_need_a_tokenizer_with_one():
    turns = (("user", "hi"),)
    chats = Prompts(prompts=("User: hi",), source="s", turns=(turns,))
    with pytest.raises(ModelError, match="runs/x/adapter: the adapter was trained on chats rendered with the"):
        render_as_trained(chats, _tokenizer(None), template="chat-template", adapter="runs/x/adapter")
    plain = Prompts(prompts=("hi",), source="s")  # plain prompts render the same with every tokenizer
    assert render_as_trained(plain, _tokenizer(None), template="chat-template", adapter="a") == [
        PLAIN_TEMPLATE.format(prompt="hi")
    ]


def test_prompts_invariants():
    with pytest.raises(ValueError, match="transcript"):
        Prompts(prompts=("hi",), source="s", turns=((("user", "hi"),),))
    with pytest.raises(ValueError, match="1 prompts but 2 turns"):
        Prompts(prompts=("hi",), source="s", turns=(None, None))


@pytest.mark.parametrize(
    ("objs", "line", "rule"),
    [
        ([{"prompt": "p"}, {"prompt": " "}], 2, "column 'prompt' is empty"),
        ([{"prompt": 3}], 1, "column 'prompt' must be a string; got int 3"),
        (
            [{"text": "p"}],
            1,
            "missing column 'prompt', or a 'messages' list for a chat record (this line has ['text'])",
        ),
        ([{"messages": [USER], "prompt": "p"}], 1, "has both 'messages' and 'prompt'"),
        (
            [{"messages": "hello"}],
            1,
            "column 'messages' must be a non-empty list of {'role', 'content'} turns; got str",
        ),
        ([{"messages": []}], 1, "got an empty list"),
        ([{"messages": [{"role": "user"}]}], 1, "turn 1 of 'messages' must be an object with 'role' and 'content'"),
        ([{"messages": ["hi"]}], 1, "turn 1 of 'messages' must be an object with 'role' and 'content'; got 'hi'"),
        (
            [{"prompt": "p"}, {"messages": [{"role": "bot", "content": "x"}]}],
            2,
            "turn 1 has the unknown role 'bot' (allowed: 'system', 'user', 'assistant')",
        ),
        ([{"messages": [SYSTEM, {"role": "user", "content": ""}]}], 1, "turn 2 ('user') is empty"),
        ([{"messages": [USER, {"role": "assistant", "content": " "}]}], 1, "the response (last 'assistant' turn) is"),
        ([{"messages": [USER, {"role": "user", "content": 5}]}], 1, "turn 2 ('user') must be a string; got int 5"),
        ([{"messages": [SYSTEM]}], 1, "no 'user' turn: nothing to respond to"),
        ([{"messages": [SYSTEM, ANSWER]}], 1, "no 'user' turn before the response: nothing to respond to"),
        ([{"messages": [ANSWER]}], 1, "no 'user' turn before the response"),
        (
            [{"messages": [{"role": "user", "content": "\udcff"}]}],
            1,
            "turn 1 ('user') holds '\\udcff', a lone surrogate",
        ),
        ([["p"]], 1, "each line must be a JSON object; got list"),
    ],
)
def test_each_bad_record_has_its_own_message(tmp_path, objs, line, rule):
    path = _jsonl(tmp_path, *objs)
    message = _error(path)
    assert rule in message
    assert message.startswith(f"{path}:{line}: ")


def test_bad_files(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p"}\n{"prompt": \n')
    assert f"{path}:2: not valid JSON" in _error(path)
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("messages,id\nx,1\n")
    assert "missing column 'prompt' in the header" in _error(csv_path)
    assert "chat 'messages' records need JSON Lines" in _error(csv_path)
    csv_path.write_text("prompt\n")
    assert f"{csv_path}: the file holds no prompts" in _error(csv_path)
    csv_path.write_text("prompt,x\np,1\np,1,2\n")
    assert f"{csv_path}:3: row has 3 fields but the header has 2" in _error(csv_path)


def test_custom_columns(tmp_path):
    path = _jsonl(tmp_path, {"turns": [USER]}, {"q": "plain"})
    prompts = read_prompts_file(path, PairSpec(prompt_column="q", messages_column="turns"))
    assert prompts.turns == ((("user", "capital of France?"),), None)
    assert prompts.prompts[1] == "plain"
