"""What a run fine-tunes the model for: sequence classification or generation (instruction -> response SFT).

``auto`` is decided by the base model's config, so a user who points fedtune at a causal LM gets generation without
saying so: an architecture ending in ``ForCausalLM``/``LMHeadModel`` (or a decoder-only model type) generates, every
other model classifies (:func:`common.model.causal.is_causal_lm`). The same function decides it at every place a
run's settings arrive (``fedtune train``, the server, each site), so they cannot disagree about one model.
"""

from __future__ import annotations

from typing import Literal

from common.data.spec import utf8_problem
from common.errors import ConfigError, ModelError

ModelTask = Literal["classify", "generate"]
TaskChoice = Literal["auto", "classify", "generate"]
TASK_CHOICES: tuple[TaskChoice, ...] = ("auto", "classify", "generate")


def resolve_task(task: str, model: str) -> ModelTask:
    """``classify`` or ``generate``; ``auto`` asks ``model``'s config (a causal LM generates).

    Raises ConfigError for an unknown ``task``, ModelError for ``generate`` with a model that is not a causal LM or a
    ``model`` whose config cannot be read, except a name that is not even valid UTF-8, which is left to classify
    (whose own validation names the bad value).
    """
    if task == "classify":
        return "classify"
    if task not in ("auto", "generate"):
        raise ConfigError(f"task must be one of {', '.join(TASK_CHOICES)}; got {task!r}")
    if utf8_problem(model) is not None:  # the job's own validation names the bad --model
        return "generate" if task == "generate" else "classify"
    from common.model.causal import is_causal_lm
    from common.model.loading import resolve_base_model

    causal = is_causal_lm(resolve_base_model(model))
    if task == "generate" and not causal:
        raise ModelError(f"task generate needs a causal language model; {model} is not one (task classify)")
    return "generate" if causal else "classify"
