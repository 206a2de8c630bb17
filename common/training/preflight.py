"""Checks a training job runs before it reserves privacy budget: everything that would otherwise fail after it.

``run_train_job`` (:mod:`common.training.job`) reserves epsilon before training. Whatever is found wrong after that
costs the data owner budget for nothing, so each check here makes one such failure happen before the reservation,
with one message naming the option and the rule: the output directory and the ledger's directory take files, the
ledger is a regular file, the signing key is a small regular file, and the model trains and takes the longest
input. The checks leave nothing behind except the output directory, which the job removes again if it fails.
``name`` arguments say which option or setting named a path (``--ledger``, or ``ledger-path`` at a site).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from common.data.files import FileAccessError, check_regular_file
from common.errors import CertificateError, ConfigError, ModelError
from common.fileio import probe_writable_directory, remove_created_directories
from common.model.lora import trainable_parameter_count

if TYPE_CHECKING:
    from peft import PeftModel

    from common.training.batches import TokenizedTexts

#: A signing key is a few hundred bytes of PEM; anything much larger is the wrong file.
MAX_SIGNING_KEY_BYTES = 64 * 1024


def check_output_dir(out_dir: Path, *, name: str = "--out") -> list[Path]:
    """Create the output directory if needed and prove it takes files; it must be new or empty.

    Refuses to overwrite earlier results. Returns the directories it created (see
    :func:`~common.fileio.probe_writable_directory`): a job that then fails removes them again. ``name`` is the
    option or setting that named the directory, for the message.
    """
    try:
        if out_dir.exists() and not out_dir.is_dir():
            raise ConfigError(f"{name} {out_dir}: exists and is not a directory; choose a new {name}")
        if out_dir.is_dir() and any(out_dir.iterdir()):
            raise ConfigError(f"{name} {out_dir}: output directory exists and is not empty; choose a new {name}")
        return probe_writable_directory(out_dir)
    except OSError as exc:
        raise ConfigError(f"{name} {out_dir}: cannot create or write the output directory ({exc.strerror})") from None


def check_ledger_location(ledger: Path, *, name: str = "--ledger") -> None:
    """The ledger can be created, read and appended to: a regular file (if it exists) in a writable directory.

    The ledger's own writes (a lock, the head anchor, atomic renames) need the directory writable, so it is
    probed by creating and removing a file; directories made for the probe are removed again, and the file itself
    is only opened, never changed.
    """
    try:
        if ledger.exists() or ledger.is_symlink():
            check_regular_file(ledger)
            os.close(os.open(ledger, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC))
        remove_created_directories(probe_writable_directory(ledger.parent))
    except FileAccessError as exc:
        raise ConfigError(f"{name} {ledger}: {exc.reason}") from None
    except OSError as exc:
        raise ConfigError(f"{name} {ledger}: cannot create or write the ledger here ({exc.strerror})") from None


def check_signing_key_file(key: Path | None, *, name: str = "--signing-key") -> None:
    """A configured signing key is a small regular file (its content is checked when it is loaded)."""
    if key is None:
        return
    try:
        size = check_regular_file(key).st_size
    except FileAccessError as exc:
        raise CertificateError(f"{name} {key}: {exc.reason}") from None
    if size > MAX_SIGNING_KEY_BYTES:
        raise CertificateError(f"{name} {key}: {size:,} bytes is not a signing key (a PEM key is < 1 KB)")


def check_model_takes(
    model: PeftModel, datasets: tuple[TokenizedTexts, ...], *, max_length: int, private: bool
) -> None:
    """The model trains (has trainable parameters, Opacus accepts it) and takes the longest tokenised input.

    Training would find each of these only after the reservation. The forward pass runs without gradients in eval
    mode and releases nothing, so it spends no privacy.
    """
    import torch

    if trainable_parameter_count(model) == 0:
        raise ModelError("the model has no trainable parameters")
    if private:
        from opacus.validators import ModuleValidator

        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ModelError(f"the model cannot be trained with Opacus: {errors[0]}")
    was_training = model.training
    model.eval()
    try:
        for data in datasets:
            longest = max(range(len(data)), key=data.lengths.__getitem__)
            inputs, _ = data.batch([longest], next(model.parameters()).device)
            try:
                with torch.no_grad():
                    model(**inputs)
            except (RuntimeError, IndexError, ValueError) as exc:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ModelError(
                    f"the model fails on an input of {data.lengths[longest]} tokens (--max-length {max_length}): "
                    f"{first}"
                ) from None
    finally:
        model.train(was_training)
