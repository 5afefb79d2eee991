"""Level pairing and adapters: which teacher level each student level imitates, and the projection onto the
teacher's channels.

Levels pair by stride: each student level takes the teacher level with the nearest stride (in octaves; a tie goes
to the finer level). When the strides differ the teacher's map is resampled to the student's grid
(:func:`resample_to`): area-averaged when the teacher is finer, bilinear when it is coarser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from detkd.errors import PairingError
from detkd.types import FeatureSpec


def level_name(spec: FeatureSpec) -> str:
    """Conventional pyramid name of a level from its stride: stride 8 -> 'p3'.

    >>> level_name(FeatureSpec(64, 8)), level_name(FeatureSpec(256, 32))
    ('p3', 'p5')
    """
    return f"p{spec.stride.bit_length() - 1}" if spec.stride & (spec.stride - 1) == 0 else f"s{spec.stride}"


def pair_levels(student: Sequence[FeatureSpec], teacher: Sequence[FeatureSpec]) -> list[int]:
    """For each student level, the index of the teacher level with the nearest stride.

    >>> pair_levels([FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32)],
    ...             [FeatureSpec(64, 4), FeatureSpec(64, 8), FeatureSpec(64, 16)])
    [1, 2, 2]
    """
    if not teacher:
        raise PairingError("the teacher declares no feature levels")
    return [
        min(range(len(teacher)), key=lambda j: (abs(math.log2(teacher[j].stride / s.stride)), teacher[j].stride))
        for s in student
    ]


def same_grid(student: Sequence[FeatureSpec], teacher: Sequence[FeatureSpec]) -> bool:
    """True when both predict on the same anchor grid (same levels, same strides, in order)."""
    return [s.stride for s in student] == [t.stride for t in teacher]


def describe_pairing(student: Sequence[FeatureSpec], teacher: Sequence[FeatureSpec], pairs: Sequence[int]) -> str:
    """One clause per student level, e.g. ``p5 (stride 32, 64 ch) <- teacher p4 (stride 16, 128 ch, resampled)``."""
    out = []
    for s, j in zip(student, pairs, strict=True):
        t = teacher[j]
        note = ", resampled" if t.stride != s.stride else ""
        out.append(
            f"{level_name(s)} (stride {s.stride}, {s.channels} ch) <- teacher {level_name(t)} "
            f"(stride {t.stride}, {t.channels} ch{note})"
        )
    return "; ".join(out)


def check_pairing(student: Sequence[FeatureSpec], teacher: Sequence[FeatureSpec]) -> None:
    """Validate that student and teacher predict on the same grid (needed for logit and box KD).

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
            "logit and box KD need the same prediction grid (feature KD resamples: set kd.logit.weight=0 and "
            "kd.box.weight=0 to distil features only)"
        )
    for i, (s, t) in enumerate(zip(student, teacher, strict=True)):
        if s.stride != t.stride:
            raise PairingError(
                f"level {i}: student stride {s.stride} ({level_name(s)}) != teacher stride {t.stride} "
                f"({level_name(t)}); student levels [{s_desc}], teacher levels [{t_desc}]; logit and box KD need the "
                "same prediction grid (feature KD resamples: set kd.logit.weight=0 and kd.box.weight=0)"
            )


def resample_to(teacher_map: Tensor, size: tuple[int, int]) -> Tensor:
    """The teacher's map on the student's (H, W): area average when shrinking, bilinear when enlarging.

    >>> import torch
    >>> resample_to(torch.arange(16.0).view(1, 1, 4, 4), (2, 2))[0, 0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    if tuple(teacher_map.shape[-2:]) == tuple(size):
        return teacher_map
    if teacher_map.shape[-2] >= size[0] and teacher_map.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(teacher_map, size)
    return F.interpolate(teacher_map, size=size, mode="bilinear", align_corners=False)


class FeatureAdapters(nn.Module):
    """One learned 1x1 convolution per student level, to the channels of its paired teacher level (FitNets' regressor).

    The adapters are trained with the student and dropped after training: they never enter the exported model.
    With ``learned=False`` the maps pass unchanged (methods that compare relations need no adapter).

    >>> import torch
    >>> ad = FeatureAdapters([FeatureSpec(16, 8)], [FeatureSpec(64, 8)])
    >>> ad([torch.zeros(2, 16, 4, 4)])[0].shape
    torch.Size([2, 64, 4, 4])
    """

    def __init__(self, student: Sequence[FeatureSpec], teacher: Sequence[FeatureSpec], *, learned: bool = True) -> None:
        super().__init__()
        self.pairs = pair_levels(student, teacher)
        self.student_specs = list(student)
        self.teacher_specs = [teacher[j] for j in self.pairs]  # the teacher level each student level imitates
        self.layers = nn.ModuleList(
            nn.Conv2d(s.channels, t.channels, kernel_size=1) if learned else nn.Identity()
            for s, t in zip(student, self.teacher_specs, strict=True)
        )

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.layers):
            raise ValueError(f"FeatureAdapters: expected {len(self.layers)} feature maps, got {len(features)}")
        out = []
        for i, (f, layer, spec) in enumerate(zip(features, self.layers, self.student_specs, strict=True)):
            if f.shape[1] != spec.channels:
                raise ValueError(f"FeatureAdapters: level {i} has {f.shape[1]} channels, expected {spec.channels}")
            out.append(layer(f))
        return out
