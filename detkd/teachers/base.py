"""What every teacher shares: frozen by construction."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

_T = TypeVar("_T", bound="FrozenTeacher")  # typing.Self is 3.11+; detkd supports 3.10


class FrozenTeacher(nn.Module):
    """Base of every teacher family: after :meth:`freeze`, no parameter requires grad and the module stays in eval
    mode whatever ``train()`` is called with (a teacher's BatchNorm statistics must not drift during distillation).
    Subclasses run their forward under ``no_grad``.

    Defaults for the teacher interface: dense predictions without DFL bins and no one-to-one branch; Ultralytics
    YOLO teachers (and class-mapped wrappers) set their own."""

    reg_max: int = 1
    end2end: bool = False

    def freeze(self) -> None:
        self.requires_grad_(False)
        super().train(False)

    def train(self: _T, mode: bool = True) -> _T:
        return super().train(False)
