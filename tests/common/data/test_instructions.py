from __future__ import annotations

import re

import pytest

from common.data.instructions import CAPITALS, TASKS, WORDS, instruction_dataset, write_instruction_jsonl
from common.data.pairs import deduplicate_pairs, read_pairs_file


def test_deterministic_per_seed_and_different_across_seeds():
    a, b = instruction_dataset(200, seed=3), instruction_dataset(200, seed=3)
    assert a.prompts == b.prompts and a.responses == b.responses and a.fingerprint == b.fingerprint
    assert instruction_dataset(200, seed=4).fingerprint != a.fingerprint
    assert a.source == "builtin:instructions(n=200,seed=3)"


def test_varied_distinct_and_short():
    data = instruction_dataset()
    assert len(data) == 400
    assert len(set(data.prompts)) == 400
    assert deduplicate_pairs(data)[1] == 0
    openings = {p.split(":")[0] if ":" in p else p.split()[0] for p in data.prompts}
    assert len(openings) == len(TASKS), openings
    assert max(len(p) for p in data.prompts) < 80 and max(len(r) for r in data.responses) < 50
    assert all(w.isascii() and w.isalpha() for w in WORDS)


def test_answers_are_correct():
    data = instruction_dataset(400, seed=1)
    checked = 0
    for prompt, response in zip(data.prompts, data.responses, strict=True):
        if m := re.fullmatch(r"Add (\d+) and (\d+)\.", prompt):
            assert int(response) == int(m[1]) + int(m[2]), prompt
        elif m := re.fullmatch(r"Subtract (\d+) from (\d+)\.", prompt):
            assert int(response) == int(m[2]) - int(m[1]) >= 0, prompt
        elif m := re.fullmatch(r"Reverse the words: (.+)", prompt):
            assert response.split() == m[1].split()[::-1], prompt
        elif m := re.fullmatch(r"What is the capital of (\w+)\?", prompt):
            assert response == CAPITALS[m[1]], prompt
        elif m := re.fullmatch(r"Uppercase: (\w+)", prompt):
            assert response == m[1].upper(), prompt
        elif m := re.fullmatch(r"Repeat twice: (\w+)", prompt):
            assert response == f"{m[1]} {m[1]}", prompt
        elif m := re.fullmatch(r"First word: (.+)", prompt):
            assert response == m[1].split()[0], prompt
        elif m := re.fullmatch(r"Count the words: (.+)", prompt):
            assert int(response) == len(m[1].split()), prompt
        else:
            pytest.fail(f"unknown task: {prompt!r}")
        checked += 1
    assert checked == 400


def test_capitals_run_out_without_failing_and_small_sets_work():
    assert len(instruction_dataset(1)) == 1
    assert sum(p.startswith("What is the capital") for p in instruction_dataset(600).prompts) <= len(CAPITALS)
    with pytest.raises(ValueError, match="at least 1"):
        instruction_dataset(0)


def test_jsonl_file_reads_back_to_the_same_dataset(tmp_path):
    path = write_instruction_jsonl(tmp_path / "inst.jsonl", n=50, seed=2)
    data = read_pairs_file(path)
    assert data.fingerprint == instruction_dataset(50, seed=2).fingerprint
    assert path.read_text().count("\n") == 50
