"""Adapters that project student feature maps onto the teacher's channels, built from an explicit level pairing."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from detkd.errors import PairingError
from detkd.types import FeatureSpec


def level_name(spec: FeatureSpec) -> str:
    """Conventional pyramid name of a level from its stride: stride 8 -> 'p3'.

    >>> level_name(FeatureSpec(64, 8)), level_name(FeatureSpec(256, 32))
    ('p3', 'p5')
    """
    return f"p{spec.stride.bit_length() - 1}" if spec.stride & (spec.stride - 1) == 0 else f"s{spec.stride}"


def check_pairing(student: Sequence[FeatureSpec], teacher: Sequence[FeatureSpec]) -> None:
    """Validate that student and teacher levels can be paired one to one (same count, same strides, in order).

    Raises:
        PairingError: naming the levels that do not match.

    >>> check_pairing([FeatureSpec(16, 8), FeatureSpec(32, 16)], [FeatureSpec(64, 8), FeatureSpec(128, 16)])
    >>> check_pairing([FeatureSpec(16, 8)], [FeatureSpec(64, 16)])
    Traceback (most recent call last):
    ...
    detkd.errors.PairingError: level 0: student stride 8 (p3) != teacher stride 16 (p4); ...
    """
    s_desc = ", ".join(f"{level_name(s)}(stride {s.stride}, {s.channels} ch)" for s in student)
    t_desc = ", ".join(f"{level_name(t)}(stride {t.stride}, {t.channels} ch)" for t in teacher)
    if len(student) != len(teacher):
        raise PairingError(
            f"student has {len(student)} feature levels [{s_desc}] but teacher has {len(teacher)} [{t_desc}]; "
            "this version pairs levels one to one"
        )
    for i, (s, t) in enumerate(zip(student, teacher)):
        if s.stride != t.stride:
            raise PairingError(
                f"level {i}: student stride {s.stride} ({level_name(s)}) != teacher stride {t.stride} "
                f"({level_name(t)}); student levels [{s_desc}], teacher levels [{t_desc}]"
            )


class FeatureAdapters(nn.Module):
    """One learned 1x1 convolution per level, student channels -> teacher channels (FitNets' regressor).

    The adapters are trained with the student and dropped after training: they never enter the exported model.

    >>> import torch
    >>> ad = FeatureAdapters([FeatureSpec(16, 8)], [FeatureSpec(64, 8)])
    >>> ad([torch.zeros(2, 16, 4, 4)])[0].shape
    torch.Size([2, 64, 4, 4])
    """

    def __init__(self, student: Sequence[FeatureSpec], teacher: Sequence[FeatureSpec]) -> None:
        super().__init__()
        check_pairing(student, teacher)
        self.student_specs = list(student)
        self.teacher_specs = list(teacher)
        self.layers = nn.ModuleList(nn.Conv2d(s.channels, t.channels, kernel_size=1) for s, t in zip(student, teacher))

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.layers):
            raise ValueError(f"FeatureAdapters: expected {len(self.layers)} feature maps, got {len(features)}")
        out = []
        for i, (f, layer, spec) in enumerate(zip(features, self.layers, self.student_specs)):
            if f.shape[1] != spec.channels:
                raise ValueError(f"FeatureAdapters: level {i} has {f.shape[1]} channels, expected {spec.channels}")
            out.append(layer(f))
        return out
