"""Ultralytics RT-DETR teachers (``rtdetr-*.pt`` or a model YAML): a query-based detector as a dense teacher.

* features: the maps the decoder reads (the hybrid encoder's outputs at stride 8, 16 and 32; 256 channels for
  ``rtdetr-l``/``-x``), captured as the decoder's inputs;
* predictions: the final decoder layer's queries, each a box (normalised cxcywh) and a sigmoid class vector,
  become dense targets on the student's anchor points by :func:`detkd.teachers.dense.detections_to_dense`: each
  point takes the most confident query (max class probability >= ``min_score``) whose box contains it, with that
  query's whole class vector as the soft target.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detkd._offline import offline_env
from detkd.checkpoints import load_checkpoint, model_record
from detkd.errors import DetkdError
from detkd.students import ultralytics_yolo as uy
from detkd.students.model_spec import load_model_yaml
from detkd.teachers.base import FrozenTeacher
from detkd.teachers.dense import detections_to_dense
from detkd.types import FeatureSpec, TeacherOutputs

with offline_env():  # Ultralytics reads its offline switches when first imported
    from ultralytics.nn.modules.head import RTDETRDecoder
    from ultralytics.nn.tasks import RTDETRDetectionModel

MIN_SCORE = 0.05  # queries below this confidence claim no positions (RT-DETR keeps 300 queries per image)


def is_rtdetr(spec: str | Path) -> bool:
    """True for an RT-DETR model YAML name or a ``.pt`` whose pickle references the RT-DETR decoder."""
    p = Path(str(spec))
    if p.suffix in (".yaml", ".yml"):
        return "rtdetr" in p.name
    if p.suffix == ".pt" and p.is_file():
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(p)
        except Exception:  # not a torch zip: the regular loader reports it
            return False
        return any(n.endswith("RTDETRDecoder") for n in names)
    return False


def load_rtdetr_model(spec: str | Path, nc: int | None = None, names: dict[int, str] | None = None) -> nn.Module:
    """An RT-DETR detection model from a ``.pt`` (rebuilt from its data) or a YAML (random init; needs ``nc``)."""
    builder = {"RTDETRDetectionModel": RTDETRDetectionModel}
    if str(spec).endswith(".pt"):
        model = uy.rebuild_model(model_record(load_checkpoint(spec), spec), spec, builders=builder)
    else:
        if nc is None:
            raise ValueError("an RT-DETR teacher built from YAML needs the dataset's nc")
        model = uy.build_architecture(RTDETRDetectionModel, load_model_yaml(spec), spec, nc)
        model.names = dict(names or {})
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential) or not isinstance(layers[-1], RTDETRDecoder):
        raise DetkdError(f"{spec}: expected an Ultralytics RT-DETR model (RTDETRDecoder head)")
    return model


class RTDETRTeacher(FrozenTeacher):
    """A frozen RT-DETR returning :class:`TeacherOutputs` (decoder-input features + dense query targets)."""

    def __init__(self, model: nn.Module, source: str = "teacher") -> None:
        super().__init__()
        self.model = model.float()
        self.source = source
        head: Any = model.model[-1]  # type: ignore[index]
        self.num_classes = int(head.nc)
        self.num_queries = int(head.num_queries)
        raw_names = getattr(model, "names", None) or {}
        raw = dict(enumerate(raw_names)) if isinstance(raw_names, (list, tuple)) else dict(raw_names)
        self.names = {i: str(raw.get(i, f"class{i}")) for i in range(self.num_classes)}
        self.freeze()
        self._captured: list[Tensor] = []
        self._hook = head.register_forward_pre_hook(self._capture)
        with torch.no_grad():  # strides and channels of the decoder's inputs, measured once
            feats, _ = self._run(torch.zeros(1, 3, 64, 64))
        self.strides = tuple(64 // int(f.shape[-1]) for f in feats)
        self.specs = [FeatureSpec(int(f.shape[1]), s) for f, s in zip(feats, self.strides, strict=True)]

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._captured = list(args[0])

    def _run(self, images: Tensor) -> tuple[list[Tensor], tuple[Tensor, Tensor]]:
        _, raw = self.model(images)
        feats, self._captured = self._captured, []
        dec_boxes, dec_logits = raw[0][-1], raw[1][-1]  # the final decoder layer: (B, Q, 4), (B, Q, nc)
        return feats, (dec_boxes, dec_logits)

    @torch.no_grad()
    def forward(self, images: Tensor) -> TeacherOutputs:
        feats, (boxes, logits) = self._run(images)
        h, w = int(images.shape[-2]), int(images.shape[-1])
        scale = boxes.new_tensor([w, h, w, h])
        detections = []
        for b in range(images.shape[0]):
            probs = logits[b].float().sigmoid()
            score, label = probs.max(dim=1)
            keep = score >= MIN_SCORE
            cxcywh = boxes[b][keep].float() * scale
            xyxy = torch.cat((cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2), dim=1)
            detections.append({"boxes": xyxy, "scores": score[keep], "labels": label[keep], "probs": probs[keep]})
        dense = detections_to_dense(detections, self.num_classes, (h, w), self.strides)
        return TeacherOutputs(features=feats, specs=self.specs, heads={"one2many": dense})

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        return (
            f"{self.source} (Ultralytics RT-DETR, {self.num_queries} queries, {self.num_classes} classes, "
            f"{params / 1e6:.1f} M params)"
        )


def load_rtdetr_teacher(
    spec: str | Path, *, nc: int | None = None, names: dict[int, str] | None = None, **_: Any
) -> RTDETRTeacher:
    return RTDETRTeacher(load_rtdetr_model(spec, nc, names), source=str(spec))
