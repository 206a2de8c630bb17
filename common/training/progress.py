"""The progress-callback contract between trainers and whatever displays them (kept free of heavy imports)."""

from __future__ import annotations

from collections.abc import Callable

#: Called after every logical step with (steps done, steps planned, mean loss of the step or None if empty).
ProgressCallback = Callable[[int, int, float | None], None]
