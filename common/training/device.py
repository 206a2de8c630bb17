"""Pick the torch device a site trains on (``auto`` prefers CUDA when present)."""

from __future__ import annotations

import torch

from common.errors import ConfigError
from common.training.config import DeviceChoice


def resolve_device(choice: DeviceChoice | str) -> torch.device:
    """``auto`` is CUDA when available, else CPU; asking for CUDA without one is a ConfigError."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was requested but torch sees no CUDA device (is a CUDA build installed?)")
        return torch.device("cuda")
    if choice == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"device must be auto, cpu or cuda; got {choice!r}")
