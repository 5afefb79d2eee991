"""A KD term's weight over training: the ``schedule`` section and the factor it gives at each step."""

from __future__ import annotations

import math
from dataclasses import dataclass

from detkd.config.checks import check_choice, check_range

SCHEDULE_KINDS = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class ScheduleConfig:
    """How a KD term's weight changes over training (progress counted in epochs, per step).

    Attributes:
        kind: ``constant``, ``linear`` or ``cosine`` decay from 1 after the warm-up to ``final`` at the end of
            training (or at ``stop_epoch``).
        warmup_epochs: epochs over which the weight ramps linearly from 0 to 1.
        stop_epoch: epoch (0-based) from which the term is off; negative counts from the end, so ``-10`` with
            Ultralytics' ``close_mosaic=10`` stops KD when mosaic closes. None keeps it on to the end.
        final: factor reached at the end of a ``linear``/``cosine`` decay.
    """

    kind: str = "constant"
    warmup_epochs: float = 0.0
    stop_epoch: int | None = None
    final: float = 0.0

    def __post_init__(self) -> None:
        check_choice("schedule", "kind", self.kind, SCHEDULE_KINDS)
        check_range("schedule", "warmup_epochs", self.warmup_epochs, 0.0)
        check_range("schedule", "final", self.final, 0.0, 1.0)

    def describe(self) -> str:
        parts = [self.kind]
        if self.warmup_epochs:
            parts.append(f"warmup={self.warmup_epochs:g}")
        if self.stop_epoch is not None:
            parts.append(f"stop={self.stop_epoch}")
        if self.kind != "constant":
            parts.append(f"final={self.final:g}")
        return " ".join(parts)

    def stop(self, epochs: int) -> int:
        """The epoch from which the term is off in a run of ``epochs`` (``epochs`` when it never stops).

        >>> ScheduleConfig(stop_epoch=-10).stop(8), ScheduleConfig(stop_epoch=-10).stop(30), ScheduleConfig().stop(5)
        (-2, 20, 5)
        """
        return (
            epochs
            if self.stop_epoch is None
            else (self.stop_epoch if self.stop_epoch >= 0 else epochs + self.stop_epoch)
        )

    def factor(self, progress: float, epochs: int) -> float:
        """The weight factor at ``progress`` epochs into a run of ``epochs`` (fractions count steps).

        >>> s = ScheduleConfig(kind="linear", warmup_epochs=2, stop_epoch=-2)
        >>> [round(s.factor(p, 10), 3) for p in (0, 1, 2, 5, 8, 9)]
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
        """
        stop = float(self.stop(epochs))
        if progress >= stop:
            return 0.0
        ramp = min(1.0, progress / self.warmup_epochs) if self.warmup_epochs > 0 else 1.0
        if self.kind == "constant":
            return ramp
        x = min(max((progress - self.warmup_epochs) / max(stop - self.warmup_epochs, 1e-9), 0.0), 1.0)
        decay = (
            1.0 - (1.0 - self.final) * x
            if self.kind == "linear"
            else self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * x))
        )
        return ramp * decay
