"""Inference for evaluation and export checks: letterbox preprocessing, predictors, NMS postprocessing.

The same preprocessing and postprocessing serve PyTorch and every exported runtime, so differences in mAP between
them come from the model conversion, not from the pipeline. Preprocessing matches Ultralytics' validation: RGB,
the long side scaled to ``imgsz`` (up or down, as Ultralytics' validation loader does), letterboxed to a square with
pad value 114, scaled to [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.ops import nms

from detkd.classmap import ClassMap, resolve_class_map
from detkd.errors import InputFileError
from detkd.export.standalone import LetterboxMeta, letterbox, preprocess
from detkd.export.standalone import postprocess as bundle_postprocess

__all__ = [
    "ClassMappedPredictor",
    "LetterboxMeta",
    "Predictor",
    "TorchPredictor",
    "data_class_map",
    "letterbox",
    "on_data_classes",
    "postprocess",
    "preprocess",
    "read_image",
]


def read_image(path: Path) -> np.ndarray:
    """BGR uint8 image (grayscale and 16-bit files are converted); a clear error when it does not decode."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputFileError(path, "image does not decode")
    return img


def iterate_batches(
    paths: Sequence[Path], size: int, batch: int
) -> Iterator[tuple[np.ndarray, list[LetterboxMeta], list[Path]]]:
    for i in range(0, len(paths), batch):
        chunk = list(paths[i : i + batch])
        x, metas = preprocess([read_image(p) for p in chunk], size)
        yield x, metas, chunk


class Predictor(Protocol):
    """A model in some runtime: float32 (B, 3, S, S) in, raw predictions out.

    Raw predictions are (B, 4 + nc, A) (xywh in input pixels + class probabilities, before NMS) or, for end-to-end
    exports, (B, N, 6) (xyxy, score, class).
    """

    name: str
    max_batch: int | None
    end2end: bool

    def __call__(self, x: np.ndarray) -> np.ndarray: ...


class TorchPredictor:
    """An Ultralytics model in PyTorch (eval mode, no grad)."""

    name = "pytorch"
    max_batch: int | None = None

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu") -> None:
        from detkd.students import ultralytics_yolo as uy

        self._infer = uy.inference_output
        self.device = torch.device(device)
        self.model = model.to(self.device).float().eval()
        self.end2end = bool(getattr(model, "end2end", False))

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self._infer(self.model, torch.from_numpy(x).to(self.device))
        return out.float().cpu().numpy()


class TeacherPredictor:
    """A teacher of any family as an evaluable detector: its dense outputs (already on the data's classes) as
    Ultralytics-style predictions (B, 4 + nc, A): xywh boxes in input pixels and class probabilities (0 for classes
    no teacher class maps to)."""

    name = "teacher"
    max_batch: int | None = None
    end2end = False

    def __init__(self, teacher: Any, device: str | torch.device = "cpu") -> None:
        self.teacher, self.device = teacher, torch.device(device)

    @torch.no_grad()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        head = self.teacher(torch.from_numpy(x).to(self.device)).heads["one2many"]
        xyxy = head.boxes_xyxy().float()
        xywh = torch.cat(((xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]), dim=1)
        probs = head.cls_logits.float().sigmoid()
        if head.class_mask is not None:
            probs = probs * head.class_mask.float().view(1, -1, 1)
        return torch.cat((xywh, probs), dim=1).cpu().numpy()


class ClassMappedPredictor:
    """A predictor whose classes are turned into the data's through a class map (a model trained on other classes).

    Dense outputs: each data class takes the highest probability of the model classes mapped to it (0 when none is);
    end-to-end outputs: each detection's class is renamed, and a detection of an unmapped class is dropped (score 0).
    """

    def __init__(self, inner: Predictor, cmap: ClassMap) -> None:
        self.inner, self.cmap = inner, cmap
        self.name, self.max_batch, self.end2end = inner.name, inner.max_batch, inner.end2end
        self._rename = np.full(len(cmap.teacher_names), -1, dtype=np.int64)
        for s, sources in enumerate(cmap.sources):
            for t in sources:
                if self._rename[t] < 0:
                    self._rename[t] = s

    def __call__(self, x: np.ndarray) -> np.ndarray:
        raw = self.inner(x)
        if self.end2end:
            out = raw.copy()
            cls = self._rename[np.clip(raw[..., 5].astype(np.int64), 0, len(self._rename) - 1)]
            out[..., 4] = np.where(cls >= 0, raw[..., 4], 0.0)
            out[..., 5] = np.maximum(cls, 0)
            return out
        probs = torch.from_numpy(np.ascontiguousarray(raw[:, 4:]))
        mapped = self.cmap.apply(probs, fill=0.0).numpy()
        return np.concatenate([raw[:, :4], mapped], axis=1)


def data_class_map(
    model_names: dict[int, str], data_names: dict[int, str], class_map: str | Path | None = None,
    *, source: str | Path = "model",
) -> ClassMap | None:  # fmt: skip
    """How a model's classes become the data's for scoring (see :func:`detkd.classmap.resolve_class_map`)."""
    return resolve_class_map(model_names, data_names, class_map, source=source,
                             alternative=" to score it on the data's classes")  # fmt: skip


def on_data_classes(predictor: Predictor, cmap: ClassMap | None) -> Predictor:
    """``predictor`` seen through ``cmap`` (itself when there is no map)."""
    return predictor if cmap is None else ClassMappedPredictor(predictor, cmap)


def _torchvision_nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    return nms(torch.from_numpy(boxes), torch.from_numpy(scores), iou).numpy()


def postprocess(
    raw: np.ndarray,
    metas: Sequence[LetterboxMeta],
    *,
    end2end: bool = False,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
) -> list[np.ndarray]:
    """NMS (class-aware, multi-label) and mapping back to original pixels: the bundle's own postprocessing
    (:func:`detkd.export.standalone.postprocess`) with torchvision's NMS and the evaluation threshold.

    Returns:
        One (n, 6) array per image: x1, y1, x2, y2, score, class.
    """
    return bundle_postprocess(
        raw, list(metas), end2end=end2end, conf=conf, iou=iou, max_det=max_det, nms_fn=_torchvision_nms
    )
