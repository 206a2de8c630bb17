"""A built-in, seeded, synthetic instruction dataset for generative fine-tuning demos and tests.

Each record is a short instruction with a single correct answer, computed by code, so exact match scores a model
and nothing is downloaded. The tasks are deterministic string and arithmetic operations a tiny model can partly
learn from a few hundred examples (copying, reordering, a fixed lookup table, small sums); mixing them makes the
model read the instruction to know what to do. The same ``(n, seed)`` always yields the same records, hence the
same fingerprint and the same privacy ledger entry.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from common.data.pairs import PromptResponsePairs

DEFAULT_INSTRUCTION_SIZE = 400

WORDS = (
    "apple", "river", "stone", "cloud", "green", "light", "table", "music", "bread", "train",
    "window", "garden", "silver", "paper", "ocean", "forest", "candle", "mirror", "yellow", "winter",
    "summer", "tiger", "rabbit", "orange", "pencil", "bottle", "castle", "dragon", "planet", "rocket",
    "violin", "basket", "bridge", "flower", "honey", "island", "jacket", "ladder", "marble", "needle",
)  # fmt: skip

#: Country -> capital: a fixed table the model must memorise (no arithmetic or copying shortcut).
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima",
    "Canada": "Ottawa", "Norway": "Oslo", "Sweden": "Stockholm", "Greece": "Athens", "Poland": "Warsaw",
    "Austria": "Vienna", "Ireland": "Dublin", "Chile": "Santiago", "Cuba": "Havana", "Russia": "Moscow",
}  # fmt: skip


def _words(rng: random.Random, low: int = 2, high: int = 4) -> list[str]:
    return rng.sample(WORDS, rng.randint(low, high))


def _reverse(rng: random.Random) -> tuple[str, str]:
    words = _words(rng, 3, 4)
    return f"Reverse the words: {' '.join(words)}", " ".join(reversed(words))


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    return f"Add {a} and {b}.", str(a + b)


def _subtract(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(0, 20)
    b = rng.randint(0, a)
    return f"Subtract {b} from {a}.", str(a - b)


def _capital(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(sorted(CAPITALS))
    return f"What is the capital of {country}?", CAPITALS[country]


def _uppercase(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"Uppercase: {word}", word.upper()


def _repeat(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"Repeat twice: {word}", f"{word} {word}"


def _first(rng: random.Random) -> tuple[str, str]:
    words = _words(rng, 3, 5)
    return f"First word: {' '.join(words)}", words[0]


def _count(rng: random.Random) -> tuple[str, str]:
    words = _words(rng, 1, 6)
    return f"Count the words: {' '.join(words)}", str(len(words))


#: Task name -> generator of one (prompt, response); the prompt's fixed opening tells the task.
TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "reverse": _reverse,
    "add": _add,
    "subtract": _subtract,
    "capital": _capital,
    "uppercase": _uppercase,
    "repeat": _repeat,
    "first": _first,
    "count": _count,
}


def instruction_dataset(n: int = DEFAULT_INSTRUCTION_SIZE, seed: int = 0) -> PromptResponsePairs:
    """``n`` distinct (instruction, answer) records of mixed tasks, reproducible from ``seed``.

    Tasks are drawn in turn from a seeded shuffle of :data:`TASKS`, so every task is present once ``n`` reaches
    their number; a task whose distinct prompts run out (there are only ``len(CAPITALS)`` capital questions) is
    skipped, and records are distinct so that deduplication drops nothing.
    """
    if n < 1:
        raise ValueError(f"the instruction dataset needs at least 1 record; got {n}")
    rng = random.Random(seed)
    order = list(TASKS)
    rng.shuffle(order)
    seen: set[str] = set()
    prompts: list[str] = []
    responses: list[str] = []
    attempts = 0
    while len(prompts) < n:
        attempts += 1
        if attempts > 50 * n:
            raise ValueError(f"cannot generate {n} distinct instructions; ask for fewer")
        prompt, response = TASKS[order[attempts % len(order)]](rng)
        if prompt in seen:
            continue
        seen.add(prompt)
        prompts.append(prompt)
        responses.append(response)
    return PromptResponsePairs(
        prompts=tuple(prompts), responses=tuple(responses), source=f"builtin:instructions(n={n},seed={seed})"
    )


def write_instruction_jsonl(path: str | Path, n: int = DEFAULT_INSTRUCTION_SIZE, seed: int = 0) -> Path:
    """Write :func:`instruction_dataset` as JSON Lines of ``{"prompt", "response"}`` (UTF-8); returns the path."""
    data = instruction_dataset(n, seed)
    path = Path(path)
    lines = (json.dumps({"prompt": p, "response": r}) + "\n" for p, r in zip(data.prompts, data.responses, strict=True))
    path.write_text("".join(lines), encoding="utf-8")
    return path
