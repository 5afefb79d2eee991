"""What every teacher shares: frozen by construction."""

from __future__ import annotations

from typing import Self

from torch import nn


class FrozenTeacher(nn.Module):
    """Base of every teacher family: after :meth:`freeze`, no parameter requires grad and the module stays in eval
    mode whatever ``train()`` is called with (a teacher's BatchNorm statistics must not drift during distillation).
    Subclasses run their forward under ``no_grad``."""

    def freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> Self:
        return super().train(False)
