"""The one place that touches Ultralytics internals: models, the Detect head's outputs, the detection loss.

Ultralytics' Detect head returns a dict of raw tensors in training (``boxes`` (B, 4*reg_max, A), ``scores``
(B, nc, A), ``feats`` = the P3-P5 inputs of the head), an ``(inference, dict)`` tuple in eval mode, and wraps both in
``one2many``/``one2one`` branches for end-to-end heads (YOLO26). Everything here turns those shapes into detkd's
typed ``HeadOutputs`` / ``FeatureSpec`` so no other module needs to know them. Tested against the installed
Ultralytics by ``tests/students/test_ultralytics_contract.py``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from torch import Tensor, nn

from detkd._offline import ensure_offline
from detkd.checkpoints import load_checkpoint
from detkd.errors import DetkdError, InputFileError
from detkd.types import FeatureSpec, HeadOutputs

ensure_offline()

from ultralytics.nn.modules.head import Detect, v10Detect  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402
from ultralytics.utils.loss import E2ELoss, v8DetectionLoss  # noqa: E402
from ultralytics.utils.tal import make_anchors  # noqa: E402

LOGGER = logging.getLogger(__name__)

BRANCHES = ("one2many", "one2one")
_DETECT_TYPES = (Detect, v10Detect)


def detect_head(model: nn.Module, source: str = "model") -> Detect:
    """The model's Detect head; a clear error for anything that is not a plain detection model."""
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    if head is None or type(head) not in _DETECT_TYPES:
        kind = type(head).__name__ if head is not None else type(model).__name__
        raise DetkdError(f"{source}: expected an Ultralytics detection model with a Detect head, got {kind}")
    return cast(Detect, head)


def is_end2end(model: nn.Module) -> bool:
    """True when the head has a one-to-one branch (YOLO26, YOLOv10)."""
    return getattr(detect_head(model), "one2one_cv2", None) is not None


def feature_specs(model: nn.Module) -> list[FeatureSpec]:
    """Channels and strides of the neck maps that feed the Detect head (P3-P5 for standard YOLO)."""
    head = detect_head(model)
    branch: Any = head.cv2 if head.cv2 is not None else head.one2one_cv2
    channels = [int(seq[0].conv.in_channels) for seq in branch]
    strides = [int(s) for s in head.stride.tolist()]
    if any(s <= 0 for s in strides):
        raise DetkdError("model strides are not initialised (build the model before pairing)")
    return [FeatureSpec(c, s) for c, s in zip(channels, strides)]


def reg_max(model: nn.Module) -> int:
    return int(detect_head(model).reg_max)


def class_names(model: nn.Module) -> dict[int, str]:
    names = getattr(model, "names", None) or {}
    if isinstance(names, list):
        names = dict(enumerate(names))
    return {int(k): str(v) for k, v in names.items()}


def split_branches(preds: Any) -> dict[str, dict[str, Any]]:
    """Normalise Detect outputs (train dict, eval tuple, end-to-end branches) to ``{branch: raw dict}``."""
    if isinstance(preds, tuple):
        preds = preds[1]
    if not isinstance(preds, dict):
        raise TypeError(f"unexpected Detect output type {type(preds).__name__}")
    if "one2many" in preds:
        return {k: preds[k] for k in BRANCHES if preds.get(k)}
    return {"one2many": preds}


def head_outputs(branch: dict[str, Any], head: Detect) -> HeadOutputs:
    """One branch's raw dict as typed dense outputs with anchors."""
    anchor_points, stride_tensor = make_anchors(branch["feats"], head.stride, 0.5)
    return HeadOutputs(
        cls_logits=branch["scores"],
        box_raw=branch["boxes"],
        reg_max=int(head.reg_max),
        anchor_points=anchor_points,
        stride_tensor=stride_tensor,
    )


def neck_features(preds: Any) -> list[Tensor]:
    """The maps the head consumed (identical for both branches of an end-to-end head)."""
    return list(split_branches(preds)["one2many"]["feats"])


def inference_output(model: nn.Module, x: Tensor) -> Tensor:
    """Decoded predictions in eval mode: (B, 4 + nc, A) xywh + class probabilities, or (B, max_det, 6) for
    end-to-end heads (xyxy, score, class)."""
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


def build_model_from_yaml(cfg: str | Path, nc: int, names: dict[int, str], *, verbose: bool = False) -> DetectionModel:
    """A freshly initialised detection model from an Ultralytics model YAML (a file or a packaged name)."""
    try:
        model = DetectionModel(str(cfg), nc=nc, verbose=verbose)
    except FileNotFoundError as e:
        raise InputFileError(cfg, "model YAML not found (a file path or an Ultralytics name like yolov8n.yaml)") from e
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        raise InputFileError(cfg, f"model YAML does not build ({type(e).__name__}: {e})") from e
    model.names = dict(names)
    detect_head(model, str(cfg))
    return model


def load_detection_model(path: str | Path) -> DetectionModel:
    """Load an Ultralytics detection checkpoint safely (restricted unpickler) as a float32 model."""
    ckpt = load_checkpoint(path)
    model = ckpt.get("ema") if ckpt.get("ema") is not None else ckpt.get("model")
    if not isinstance(model, nn.Module):
        raise InputFileError(path, "checkpoint holds no model ('ema' or 'model' key)")
    detect_head(model, str(path))
    model = model.float()
    if not hasattr(model, "yaml"):
        raise InputFileError(path, "checkpoint model has no architecture YAML (not an Ultralytics model)")
    loaded: Any = model
    loaded.task = "detect"  # normally set by Ultralytics' YOLO wrapper, which detkd skips (it unpickles unsafely)
    return cast(DetectionModel, loaded)


def build_student(spec: str | Path, nc: int, names: dict[int, str]) -> DetectionModel:
    """The student from a model YAML or a ``.pt`` checkpoint (re-headed when its class count differs)."""
    if str(spec).endswith(".pt"):
        model = load_detection_model(spec)
        if detect_head(model).nc != nc:
            LOGGER.info("Student %s has %d classes, data has %d: rebuilding the head", spec, detect_head(model).nc, nc)
            fresh = DetectionModel(model.yaml, nc=nc, verbose=False)
            fresh.load(model)
            model = fresh
        model.names = dict(names)
    else:
        model = build_model_from_yaml(spec, nc, names)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class DetectionLossResult:
    """Ultralytics' detection loss plus what the assigner decided.

    Attributes:
        loss: (3,) gain-weighted terms (box, cls, dfl or l1) per image, not yet multiplied by the batch size.
        items: detached terms by Ultralytics' names, for logging.
        fg_masks: branch -> (B, A) foreground mask of the task-aligned assigner.
        target_boxes: branch -> (B, A, 4) assigned ground-truth boxes, xyxy input pixels (meaningful on foreground).
    """

    loss: Tensor
    items: dict[str, Tensor]
    fg_masks: dict[str, Tensor]
    target_boxes: dict[str, Tensor]


class AssignedDetectionLoss:
    """Ultralytics' own detection criterion, run so that the assigner's foreground is kept for KD.

    Uses the model's ``init_criterion()`` (``v8DetectionLoss``, or ``E2ELoss`` for end-to-end heads) and its
    ``get_assigned_targets_and_loss``, so losses, gains and assignment stay exactly Ultralytics'.
    """

    def __init__(self, model: DetectionModel) -> None:
        self.inner = model.init_criterion()
        if not isinstance(self.inner, (v8DetectionLoss, E2ELoss)):
            raise DetkdError(f"unsupported detection criterion {type(self.inner).__name__}")

    def __call__(self, branches: dict[str, dict[str, Any]], batch: dict[str, Any]) -> DetectionLossResult:
        if isinstance(self.inner, E2ELoss):
            (fg_m, _, box_m, *_), loss_m, _ = self.inner.one2many.get_assigned_targets_and_loss(
                branches["one2many"], batch
            )
            (fg_o, _, box_o, *_), loss_o, items = self.inner.one2one.get_assigned_targets_and_loss(
                branches["one2one"], batch
            )
            loss = loss_m * self.inner.o2m + loss_o * self.inner.o2o
            return DetectionLossResult(
                loss, items, {"one2many": fg_m, "one2one": fg_o}, {"one2many": box_m, "one2one": box_o}
            )
        (fg, _, boxes, *_), loss, items = self.inner.get_assigned_targets_and_loss(branches["one2many"], batch)
        return DetectionLossResult(loss, items, {"one2many": fg}, {"one2many": boxes})

    def update(self) -> None:
        """Per-epoch schedule of the end-to-end loss (one-to-many weight decay); no-op otherwise."""
        if hasattr(self.inner, "update"):
            self.inner.update()
