"""A built-in, seeded, synthetic sentiment dataset for the default run, demos and tests.

Reviews of products and services are assembled from templates. Labels follow the meaning, not single words:
negations ("was not terrible") and contrasts ("slow at first, but overall excellent") force a model to read the
sentence rather than spot a keyword, so the task is learnable but not trivial. The same ``(size, seed)`` always
yields the same dataset, hence the same fingerprint and the same privacy ledger entry.
"""

from __future__ import annotations

import random

from common.data.dataset import LabeledTexts

SAMPLE_LABELS = ("negative", "positive")
DEFAULT_SAMPLE_SIZE = 2400

_SUBJECTS = (
    "the battery",
    "this phone",
    "the hotel room",
    "the staff",
    "our waiter",
    "the delivery",
    "the camera",
    "this laptop",
    "the soundtrack",
    "the plot",
    "the checkout process",
    "the customer service",
    "the app",
    "the mattress",
    "the coffee",
    "the installation",
    "the screen",
    "the keyboard",
    "the tour guide",
    "the headphones",
    "the rental car",
    "the support team",
    "the manual",
    "the packaging",
)
_POSITIVE = (
    "great",
    "excellent",
    "wonderful",
    "reliable",
    "friendly",
    "fast",
    "delightful",
    "superb",
    "comfortable",
    "impressive",
    "solid",
    "pleasant",
    "helpful",
    "flawless",
    "charming",
)
_NEGATIVE = (
    "terrible",
    "awful",
    "slow",
    "broken",
    "rude",
    "disappointing",
    "noisy",
    "flimsy",
    "boring",
    "dreadful",
    "useless",
    "confusing",
    "unreliable",
    "overpriced",
    "sloppy",
)
_INTENSIFIERS = ("really", "quite", "truly", "remarkably", "rather", "very", "absolutely")
_POSITIVE_CLOSINGS = (
    "would buy again",
    "highly recommended",
    "worth every penny",
    "five stars from me",
    "we will be back",
)
_NEGATIVE_CLOSINGS = (
    "would not recommend",
    "never again",
    "a waste of money",
    "one star at most",
    "i want a refund",
)
_NEUTRAL_OPENERS = ("honestly,", "to be fair,", "after two weeks,", "in short,", "overall,", "", "", "")


def _sentence(rng: random.Random, positive: bool) -> str:
    subject = rng.choice(_SUBJECTS)
    same, other = (_POSITIVE, _NEGATIVE) if positive else (_NEGATIVE, _POSITIVE)
    closing = rng.choice(_POSITIVE_CLOSINGS if positive else _NEGATIVE_CLOSINGS)
    opener = rng.choice(_NEUTRAL_OPENERS)
    kind = rng.randrange(6)
    if kind == 0:
        body = f"{subject} was {rng.choice(same)}"
    elif kind == 1:
        body = f"{subject} is {rng.choice(_INTENSIFIERS)} {rng.choice(same)}"
    elif kind == 2:
        first, second = rng.sample(same, 2)
        body = f"{subject} felt {first} and {second}, {closing}"
    elif kind == 3:
        # Negation: the only sentiment word belongs to the opposite class.
        body = f"{subject} was not {rng.choice(other)} at all"
    elif kind == 4:
        # Contrast: the clause after "but" decides.
        body = f"{subject} seemed {rng.choice(other)} at first, but in the end it was {rng.choice(same)}"
    else:
        body = f"i found {subject} {rng.choice(_INTENSIFIERS)} {rng.choice(same)}; {closing}"
    return f"{opener} {body}.".strip()


def sample_dataset(size: int = DEFAULT_SAMPLE_SIZE, *, seed: int = 0) -> LabeledTexts:
    """``size`` distinct labelled sentences, balanced between the two classes, reproducible from ``seed``."""
    if size < 2:
        raise ValueError(f"sample size must be at least 2; got {size}")
    rng = random.Random(seed)
    seen: set[str] = set()
    texts: list[str] = []
    labels: list[int] = []
    attempts = 0
    while len(texts) < size:
        attempts += 1
        if attempts > 50 * size:
            raise ValueError(f"cannot generate {size} distinct sample sentences; ask for fewer")
        label = len(texts) % 2  # alternate to keep the classes balanced
        text = _sentence(rng, positive=bool(label))
        if text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append(label)
    return LabeledTexts(
        texts=tuple(texts),
        labels=tuple(labels),
        label_names=SAMPLE_LABELS,
        source=f"builtin:sample(size={size},seed={seed})",
    )
