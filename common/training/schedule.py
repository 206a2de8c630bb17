"""Learning-rate schedules over a whole run: warm-up, then constant, linear or cosine decay.

A federated run is ``rounds`` x ``steps per round`` optimiser steps at each site; the schedule spans all of them, so
that late rounds take small steps instead of overshooting (the learning rate of round r's local steps continues
where round r-1's left off). Warm-up (Goyal et al. 2017, "Accurate, Large Minibatch SGD") keeps the first steps of
a freshly initialised adapter small; decay (cosine: Loshchilov & Hutter, ICLR 2017, "SGDR") lets the noisy late
steps of DP-SGD average out rather than move the model (the noise is added whatever the learning rate).

The schedule is a pure function of the step index, so a resumed run, or a site that misses a round, takes exactly
the learning rate an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

ScheduleKind = Literal["constant", "linear", "cosine"]


@dataclass(frozen=True)
class LrSchedule:
    """The multiplier of the base learning rate at each of ``total_steps`` steps.

    ``warmup_steps`` steps ramp linearly up to 1 (the first step is not 0: every step moves the model); then
    ``kind`` decays to 0 at the last step (``constant`` stays at 1).
    """

    kind: ScheduleKind
    total_steps: int
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        if self.total_steps < 1 or not 0 <= self.warmup_steps < max(self.total_steps, 1):
            raise ValueError(f"a schedule needs 0 <= warmup < total steps; got {self.warmup_steps}, {self.total_steps}")

    @classmethod
    def over(cls, kind: ScheduleKind, total_steps: int, warmup_fraction: float) -> LrSchedule:
        """A schedule over ``total_steps`` whose warm-up is ``warmup_fraction`` of them (rounded down)."""
        warmup = min(int(warmup_fraction * total_steps), total_steps - 1)
        return cls(kind=kind, total_steps=total_steps, warmup_steps=max(warmup, 0))

    def factor(self, step: int) -> float:
        """The multiplier at step ``step`` (0-based); steps past the end keep the last value."""
        step = min(max(step, 0), self.total_steps - 1)
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.kind == "constant":
            return 1.0
        span = self.total_steps - self.warmup_steps
        progress = (step - self.warmup_steps + 1) / (span + 1)  # never exactly 0: the last step still moves a little
        if self.kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))
