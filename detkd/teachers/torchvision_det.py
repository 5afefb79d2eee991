"""torchvision detectors as teachers: Faster R-CNN, RetinaNet, FCOS (any ``torchvision.models.detection`` builder
with an FPN backbone).

Spec: ``torchvision:<builder>[:<weights.pth>]``, e.g. ``torchvision:fcos_resnet50_fpn:fcos_coco.pth``. The weights
are a state dict (loaded with ``weights_only=True``); without them the model is randomly initialised (tests).
Class names: torchvision's COCO category list when the head has 91 classes, else ``class<i>``.

Aligning with the student:

* input: the student's letterboxed RGB batch in [0, 1], normalised with the model's own mean/std and *not*
  resized (torchvision would resize to 800 px), so the FPN levels of stride 8, 16 and 32 lie on the student's
  P3-P5 grid exactly;
* features: those FPN maps (256 channels each);
* predictions: the model's final detections (its own post-processing and score threshold) become dense targets
  on the student's anchor points by one rule, :func:`detections_to_dense`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detkd.errors import ConfigError, InputFileError
from detkd.teachers.base import FrozenTeacher
from detkd.teachers.dense import detections_to_dense
from detkd.types import FeatureSpec, TeacherOutputs

PREFIX = "torchvision:"
STRIDES = (8, 16, 32)


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """``torchvision:<builder>[:<weights>]`` -> (builder, weights path or None)."""
    body = str(spec)[len(PREFIX) :]
    builder, _, weights = body.partition(":")
    return builder, (Path(weights) if weights else None)


def _builders() -> dict[str, Any]:
    from torchvision.models import detection

    names = [n for n in dir(detection) if n.endswith("_fpn") or n.endswith("_fpn_v2")]
    return {n: getattr(detection, n) for n in names if not n.startswith(("mask", "keypoint"))}


def _coco_categories() -> list[str]:
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    return list(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])


def _num_classes(state: dict[str, Tensor]) -> int:
    for key in ("roi_heads.box_predictor.cls_score.weight", "head.classification_head.cls_logits.weight"):
        if key in state:
            w = state[key]
            if key.startswith("roi_heads"):
                return int(w.shape[0])
            anchors = int(state["head.regression_head.bbox_reg.weight"].shape[0]) // 4
            return int(w.shape[0]) // max(anchors, 1)
    raise ValueError("no classification layer found")


def build_torchvision_detector(spec: str) -> tuple[nn.Module, str]:
    """The detector (eval mode, float32) and its builder name."""
    builder, weights = parse_spec(spec)
    builders = _builders()
    if builder not in builders:
        raise ConfigError(f"{spec}: unknown torchvision detector '{builder}'; valid: {', '.join(sorted(builders))}")
    state = None
    num_classes = 91
    if weights is not None:
        if not weights.is_file():
            raise InputFileError(weights, "teacher weights file not found")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as e:  # restricted unpickler: a non-state-dict file is refused, never executed
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise InputFileError(weights, f"not a torchvision state dict ({type(e).__name__}: {first})") from e
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        if not isinstance(state, dict):
            raise InputFileError(weights, "expected a state dict (torch.save(model.state_dict(), path))")
        try:
            num_classes = _num_classes(state)
        except (ValueError, KeyError) as e:
            raise InputFileError(weights, f"does not look like a {builder} state dict ({e})") from e
    model = builders[builder](weights=None, weights_backbone=None, num_classes=num_classes)
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise InputFileError(weights, f"weights do not match {builder} ({str(e)[:300]})") from e  # type: ignore[arg-type]
    return model.float().eval(), builder


class TorchvisionTeacher(FrozenTeacher):
    """A frozen torchvision FPN detector returning :class:`TeacherOutputs` on the student's grid."""

    mean: Tensor
    std: Tensor

    def __init__(self, model: nn.Module, builder: str, source: str) -> None:
        super().__init__()
        self.model = model
        self.builder = builder
        self.source = source
        self.kind = "two-stage" if hasattr(model, "roi_heads") else "one-stage"
        self.num_classes = self._num_classes()
        cats = _coco_categories() if self.num_classes == 91 else []
        self.names = {i: (cats[i] if cats else f"class{i}") for i in range(self.num_classes)}
        self.specs = [FeatureSpec(int(getattr(model.backbone, "out_channels", 256)), s) for s in STRIDES]
        m: Any = model
        self.register_buffer("mean", torch.tensor(m.transform.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(m.transform.image_std).view(1, 3, 1, 1), persistent=False)
        self.freeze()
        with torch.no_grad():  # which FPN output has which stride, checked once here rather than mid-epoch
            probe = m.backbone(torch.zeros(1, 3, 64, 64))
        by_stride = {64 // int(f.shape[-1]): key for key, f in probe.items()}
        missing = [s for s in STRIDES if s not in by_stride]
        if missing:
            raise ConfigError(f"{source}: the backbone has no FPN level of stride {missing}")
        self.level_keys = [by_stride[s] for s in STRIDES]

    def _num_classes(self) -> int:
        m: Any = self.model
        if self.kind == "two-stage":
            return int(m.roi_heads.box_predictor.cls_score.out_features)
        return int(m.head.classification_head.num_classes)

    def _detect(self, x: Tensor, maps: list[Tensor], feats_dict: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        from torchvision.models.detection.image_list import ImageList

        m: Any = self.model
        images = ImageList(x, [(int(x.shape[-2]), int(x.shape[-1]))] * x.shape[0])
        if self.kind == "two-stage":
            proposals, _ = m.rpn(images, feats_dict)
            detections, _ = m.roi_heads(feats_dict, proposals, images.image_sizes)
            return list(detections)
        head_outputs = m.head(maps)
        anchors = m.anchor_generator(images, maps)
        per_level = [f.shape[-2] * f.shape[-1] for f in maps]
        if hasattr(m, "centerness_loss") or "bbox_ctrness" in head_outputs:  # FCOS: one anchor per position
            counts = per_level
        else:  # RetinaNet: A anchors per position
            total = head_outputs["cls_logits"].shape[1]
            counts = [n * (total // sum(per_level)) for n in per_level]
        split_out = {k: list(v.split(counts, dim=1)) for k, v in head_outputs.items()}
        split_anchors = [list(a.split(counts)) for a in anchors]
        return list(m.postprocess_detections(split_out, split_anchors, images.image_sizes))

    @torch.no_grad()
    def forward(self, images: Tensor) -> TeacherOutputs:
        m: Any = self.model
        normed = (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)
        feats_dict = m.backbone(normed)
        maps = list(feats_dict.values())
        detections = self._detect(normed, maps, feats_dict)
        dense = detections_to_dense(
            detections, self.num_classes, (int(images.shape[-2]), int(images.shape[-1])), STRIDES
        )
        features = [feats_dict[k] for k in self.level_keys]
        return TeacherOutputs(features=features, specs=self.specs, heads={"one2many": dense})

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        return (
            f"{self.source} (torchvision {self.kind} {self.builder}, {self.num_classes} classes, {params / 1e6:.1f} M)"
        )


def load_torchvision_teacher(spec: str | Path, **_: Any) -> TorchvisionTeacher:
    model, builder = build_torchvision_detector(str(spec))
    return TorchvisionTeacher(model, builder, str(spec))
