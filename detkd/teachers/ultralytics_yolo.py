"""Ultralytics YOLO teachers (YOLOv5u/v8/11/26 ``.pt`` or model YAML): frozen, eval-locked, no_grad."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from detkd.students import ultralytics_yolo as uy
from detkd.teachers.base import FrozenTeacher
from detkd.types import TeacherOutputs


class UltralyticsTeacher(FrozenTeacher):
    """A frozen Ultralytics detection model that returns :class:`TeacherOutputs`.

    Frozen by construction: parameters do not require grad, the module stays in eval mode whatever ``train()`` is
    called with (so BatchNorm uses its running statistics), and ``forward`` runs under ``no_grad``.
    """

    def __init__(self, model: nn.Module, source: str = "teacher") -> None:
        super().__init__()
        uy.detect_head(model, source)
        self.model = model.float()
        self.source = source
        self.specs = uy.feature_specs(model)
        self.names = uy.class_names(model)
        self.num_classes = int(uy.detect_head(model).nc)
        self.reg_max = uy.reg_max(model)
        self.end2end = uy.is_end2end(model)
        self.freeze()

    @torch.no_grad()
    def forward(self, images: Tensor) -> TeacherOutputs:
        preds = self.model(images)
        branches = uy.split_branches(preds)
        head = uy.detect_head(self.model)
        return TeacherOutputs(
            features=uy.neck_features(preds),
            specs=self.specs,
            heads={name: uy.head_outputs(raw, head) for name, raw in branches.items()},
        )

    def describe(self) -> str:
        kind = "end-to-end" if self.end2end else "dense"
        return (
            f"{self.source} (Ultralytics {kind} head, {self.num_classes} classes, reg_max {self.reg_max}, "
            f"{uy.count_parameters(self.model) / 1e6:.2f} M params)"
        )


def load_ultralytics_teacher(
    spec: str | Path, *, nc: int | None = None, names: dict[int, str] | None = None
) -> UltralyticsTeacher:
    """A teacher from a ``.pt`` checkpoint (loaded safely) or, for tests and smoke runs, a model YAML.

    A teacher built from YAML is randomly initialised: useful only to exercise the pipeline.
    """
    if str(spec).endswith(".pt"):
        model = uy.load_detection_model(spec)
    else:
        if nc is None or names is None:
            raise ValueError("a teacher built from YAML needs the dataset's nc and names")
        model = uy.build_model_from_yaml(spec, nc, names)
    return UltralyticsTeacher(model, source=str(spec))
