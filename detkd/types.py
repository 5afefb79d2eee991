"""The few data types every part of detkd speaks: feature specs, dense head outputs, teacher outputs.

Only torch is imported here; third-party model formats are turned into these types by ``detkd.students`` and
``detkd.teachers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class FeatureSpec:
    """One feature-pyramid level: its channel count and stride (input pixels per feature cell).

    >>> FeatureSpec(channels=64, stride=8)
    FeatureSpec(channels=64, stride=8)
    """

    channels: int
    stride: int


def decode_distances(dist: Tensor, anchor_points: Tensor, stride_tensor: Tensor) -> Tensor:
    """Turn left/top/right/bottom distances (grid units) at anchor points into xyxy boxes in pixels.

    Shape:
        dist: (B, 4, A); anchor_points: (A, 2) in grid units; stride_tensor: (A, 1). Returns (B, 4, A).

    >>> d = torch.ones(1, 4, 1); a = torch.tensor([[2.5, 2.5]]); s = torch.tensor([[8.0]])
    >>> decode_distances(d, a, s)[0, :, 0].tolist()
    [12.0, 12.0, 28.0, 28.0]
    """
    a = anchor_points.t().unsqueeze(0)  # (1, 2, A)
    lt, rb = dist[:, :2], dist[:, 2:]
    return torch.cat((a - lt, a + rb), dim=1) * stride_tensor.t().unsqueeze(0)


def dfl_expectation(box_raw: Tensor, reg_max: int) -> Tensor:
    """Expected distance of a DFL box distribution; identity when the head has no bins (``reg_max == 1``).

    Shape:
        box_raw: (B, 4 * reg_max, A). Returns (B, 4, A) distances in grid units.
    """
    if reg_max == 1:
        return box_raw
    b, _, a = box_raw.shape
    prob = box_raw.view(b, 4, reg_max, a).softmax(dim=2)
    bins = torch.arange(reg_max, device=box_raw.device, dtype=prob.dtype).view(1, 1, reg_max, 1)
    return (prob * bins).sum(dim=2)


@dataclass
class HeadOutputs:
    """Dense per-anchor outputs of one detection-head branch, in training layout.

    Attributes:
        cls_logits: (B, nc, A) raw class logits (YOLO heads are sigmoid, one logit per class).
        box_raw: (B, 4 * reg_max, A): DFL bin logits when ``reg_max > 1``, else ltrb distances in grid units.
        reg_max: number of DFL bins per box edge (1 means the head regresses distances directly, e.g. YOLO26).
        anchor_points: (A, 2) anchor centres in grid units of their level.
        stride_tensor: (A, 1) stride of each anchor's level.
        class_mask: optional (nc,) 1 for classes that take part in logit KD (a teacher mapped to the student's
            classes has none for classes no teacher class maps to).
        box_valid: optional (B, A) 1 where the teacher's box is a prediction (teachers that give detections rather
            than dense outputs have none elsewhere); box KD is restricted to it.
    """

    cls_logits: Tensor
    box_raw: Tensor
    reg_max: int
    anchor_points: Tensor
    stride_tensor: Tensor
    class_mask: Tensor | None = None
    box_valid: Tensor | None = None

    def distances(self) -> Tensor:
        """ltrb distances (B, 4, A) in grid units."""
        return dfl_expectation(self.box_raw, self.reg_max)

    def boxes_xyxy(self) -> Tensor:
        """Decoded boxes (B, 4, A), xyxy in input pixels."""
        return decode_distances(self.distances(), self.anchor_points, self.stride_tensor)


@dataclass
class TeacherOutputs:
    """What a frozen teacher gives the distiller for one batch.

    Attributes:
        features: neck maps that feed the detection head, one (B, C_l, H_l, W_l) tensor per level.
        specs: the channels and stride of each level, in the same order.
        heads: dense head outputs by branch name (``"one2many"`` always; ``"one2one"`` for end-to-end heads).
    """

    features: list[Tensor]
    specs: list[FeatureSpec]
    heads: dict[str, HeadOutputs] = field(default_factory=dict)


class Teacher(Protocol):
    """What every teacher family provides (a frozen ``nn.Module``): its levels, classes and head kind, and
    ``TeacherOutputs`` for a batch of student inputs (RGB in [0, 1], the student's letterboxed size)."""

    specs: list[FeatureSpec]
    names: dict[int, str]
    num_classes: int
    reg_max: int
    end2end: bool

    def __call__(self, images: Tensor) -> TeacherOutputs: ...

    def describe(self) -> str: ...

    def to(self, device: torch.device | str) -> Teacher: ...
