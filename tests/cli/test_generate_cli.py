"""``fedtune train --task generate`` then ``fedtune generate``, as a user runs them, on a tiny GPT-2 and Llama."""

from __future__ import annotations

import json

import pytest

from common.data.instructions import write_instruction_jsonl
from common.model.adapter import MODEL_INFO_FILE
from tests.causal_helpers import build_tiny_gpt2, build_tiny_llama
from tests.helpers import run_cli, write_jsonl


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


def test_train_generate_then_generate_from_a_prompt_and_a_file(tiny_gpt2, tmp_path, capsys):
    data = write_instruction_jsonl(tmp_path / "pairs.jsonl", n=40, seed=2)
    out = tmp_path / "run"
    common = ["--model", str(tiny_gpt2), "--data", str(data), "--ledger", str(tmp_path / "ledger.jsonl")]
    code = run_cli(["train", *common, "--epochs", "1", "--batch-size", "8", "--max-length", "48", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "recipe (" in printed and "ROUGE-L" in printed  # the task came from the model's config
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "generate" and summary["privacy"]["differentially_private"]

    single = tmp_path / "one.jsonl"
    code = run_cli(
        [
            "generate",
            "--adapter",
            str(out / "adapter"),
            "--prompt",
            "Add 3 and 4.",
            "--out",
            str(single),
            "--max-new-tokens",
            "3",
        ]
    )
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in single.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["prompt"] == "Add 3 and 4." and isinstance(rows[0]["generation"], str)

    many = tmp_path / "many.jsonl"
    code = run_cli(
        [
            "generate",
            "--adapter",
            str(out / "adapter"),
            "--data",
            str(data),
            "--out",
            str(many),
            "--max-new-tokens",
            "2",
            "--batch-size",
            "16",
        ]
    )
    assert code == 0
    assert len(many.read_text().splitlines()) == 40


def test_generate_refuses_a_classifier_adapter_and_bad_inputs(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "clf"
    assert (
        run_cli(
            [
                "train",
                "--model",
                str(tiny_model_dir),
                "--no-dp",
                "--max-epsilon",
                "none",
                "--epochs",
                "1",
                "--ledger",
                str(tmp_path / "l.jsonl"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    capsys.readouterr()
    code = run_cli(["generate", "--adapter", str(out / "adapter"), "--prompt", "hi", "--out", str(tmp_path / "g")])
    assert code != 0 and "not a generative adapter" in capsys.readouterr().err
    code = run_cli(["generate", "--adapter", str(out / "adapter"), "--out", str(tmp_path / "g")])
    assert code == 2 and "exactly one of --prompt" in capsys.readouterr().err


#: A chat template over the tiny tokenizer's words ("User", ":", "Assistant", ...), so rendering is visible.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }} : {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}Assistant :{% endif %}"
)
SYSTEM = {"role": "system", "content": "the answer is yes"}


@pytest.fixture(scope="module")
def chat_adapter(tmp_path_factory):
    """A tiny Llama whose tokenizer has a chat template, trained on chat records; and the same Llama without one."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("chat")
    with_template = build_tiny_llama(root / "llama-chat")
    tokenizer = AutoTokenizer.from_pretrained(with_template)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(with_template)
    without = build_tiny_llama(root / "llama-plain")  # same seed: the same weights
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"w{i} w{i + 1}"},
                {"role": "assistant", "content": ("yes", "no")[i % 2]},
            ]
        }
        for i in range(40)
    ]
    data = write_jsonl(root / "chats.jsonl", rows)
    out = root / "run"
    args = ["--model", str(with_template), "--data", str(data), "--ledger", str(root / "ledger.jsonl")]
    code = run_cli(["train", *args, "--epochs", "1", "--batch-size", "8", "--max-length", "48", "--out", str(out)])
    assert code == 0
    return out / "adapter", without


def test_generate_from_chat_records_with_the_recorded_chat_template(chat_adapter, tmp_path, capsys):
    adapter, _ = chat_adapter
    assert json.loads((adapter / MODEL_INFO_FILE).read_text())["template"] == "chat-template"
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [
            {"messages": [SYSTEM, {"role": "user", "content": "w1 w2"}, {"role": "assistant", "content": "yes"}]},
            {"messages": [{"role": "user", "content": "w3"}]},
            {"prompt": "w4 w5"},
        ],
    )
    out = tmp_path / "gen.jsonl"
    args = ["generate", "--adapter", str(adapter), "--data", str(prompts), "--out", str(out), "--max-new-tokens", "2"]
    code = run_cli(args)
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row.get("messages") for row in rows] == [
        [SYSTEM, {"role": "user", "content": "w1 w2"}],  # the last assistant turn is the reference, left out
        [{"role": "user", "content": "w3"}],
        None,
    ]
    assert [row["prompt"] for row in rows] == ["System: the answer is yes\nUser: w1 w2", "User: w3", "w4 w5"]
    assert all(isinstance(row["generation"], str) for row in rows)


def test_chat_records_need_the_chat_template_the_adapter_was_trained_with(chat_adapter, tmp_path, capsys):
    adapter, without_template = chat_adapter
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"messages": [{"role": "user", "content": "w1"}]}])
    out = tmp_path / "gen.jsonl"
    args = ["generate", "--adapter", str(adapter), "--data", str(prompts), "--out", str(out)]
    code = run_cli([*args, "--model", str(without_template)])
    err = capsys.readouterr().err
    assert code == 1 and "trained on chats rendered with the tokenizer's chat template" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("record", "rule"),
    [
        ({"messages": "hi"}, "column 'messages' must be a non-empty list of {'role', 'content'} turns; got str"),
        ({"messages": []}, "got an empty list"),
        ({"messages": [{"role": "user"}]}, "turn 1 of 'messages' must be an object with 'role' and 'content'"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "turn 1 has the unknown role 'bot'"),
        ({"messages": [{"role": "user", "content": " "}]}, "turn 1 ('user') is empty"),
        ({"messages": [SYSTEM]}, "no 'user' turn: nothing to respond to"),
        ({"messages": [SYSTEM, {"role": "assistant", "content": "yes"}]}, "no 'user' turn before the response"),
        ({"messages": [{"role": "user", "content": "w1"}], "prompt": "w2"}, "has both 'messages' and 'prompt'"),
        ({"text": "w1"}, "missing column 'prompt', or a 'messages' list for a chat record"),
    ],
)
def test_each_bad_chat_record_is_one_line_and_writes_nothing(chat_adapter, tmp_path, capsys, record, rule):
    adapter, _ = chat_adapter
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "w1"}, record])
    out = tmp_path / "gen.jsonl"
    code = run_cli(["generate", "--adapter", str(adapter), "--data", str(prompts), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 65 and err.count("\n") == 0, err
    assert f"{prompts}:2: " in err and rule in err
    assert not out.exists()
