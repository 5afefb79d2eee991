"""Inference for evaluation and export checks: letterbox preprocessing, predictors, NMS postprocessing.

The same preprocessing and postprocessing serve PyTorch and every exported runtime, so differences in mAP between
them come from the model conversion, not from the pipeline. Preprocessing matches Ultralytics' validation: RGB,
the long side scaled to ``imgsz`` (up or down, as Ultralytics' validation loader does), letterboxed to a square with
pad value 114, scaled to [0, 1].
"""

from __future__ import annotations

import math
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
from detkd.infer.decode import postprocess as bundle_postprocess
from detkd.infer.letterboxing import PAD_VALUE, LetterboxMeta, letterbox, preprocess

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
    "preprocess_rect",
    "read_image",
    "rect_batches",
]


def read_image(path: Path) -> np.ndarray:
    """BGR uint8 image (grayscale and 16-bit files are converted); a clear error when it does not decode."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputFileError(path, "image does not decode")
    return img


def iterate_batches(
    paths: Sequence[Path], size: int, batch: int, *, rect: bool = False, stride: int = 32
) -> Iterator[tuple[np.ndarray, list[LetterboxMeta], list[Path]]]:
    """Batches of preprocessed images: square ``size`` x ``size`` letterboxes (what static-shape exports take), or
    with ``rect`` Ultralytics' rectangular validation batches (:func:`rect_batches`)."""
    if rect:
        for chunk, shape in rect_batches(paths, size, batch, stride):
            x, metas = preprocess_rect([read_image(p) for p in chunk], size, shape)
            yield x, metas, chunk
        return
    for i in range(0, len(paths), batch):
        chunk = list(paths[i : i + batch])
        x, metas = preprocess([read_image(p) for p in chunk], size)
        yield x, metas, chunk


def image_hw(path: Path) -> tuple[int, int]:
    """An image's height and width from its header (no decode); a clear error when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, UnidentifiedImageError) as e:
        raise InputFileError(path, f"image does not decode ({e})") from e
    return h, w


def rect_batches(paths: Sequence[Path], size: int, batch: int, stride: int) -> list[tuple[list[Path], tuple[int, int]]]:
    """Ultralytics' rectangular validation batches (``yolo val``'s default): images sorted by aspect ratio, each
    batch of ``batch`` given the smallest stride-multiple (height, width) that holds its images with the long side
    at ``size``, plus half a stride of padding (``ceil(shape * size / stride + 0.5) * stride``): a batch of
    640 x 512 frames at ``size`` 256 is 224 x 288.
    """
    if not paths:
        return []
    hw = np.array([image_hw(p) for p in paths], dtype=np.float64)
    ar = hw[:, 0] / hw[:, 1]
    order = np.argsort(ar, kind="stable")
    out = []
    for i in range(0, len(order), batch):
        idx = order[i : i + batch]
        lo, hi = ar[idx].min(), ar[idx].max()
        shape = [hi, 1.0] if hi < 1 else [1.0, 1 / lo] if lo > 1 else [1.0, 1.0]
        h, w = (np.ceil(np.array(shape) * size / stride + 0.5).astype(int) * stride).tolist()
        out.append(([paths[j] for j in idx], (int(h), int(w))))
    return out


def preprocess_rect(
    images: list[np.ndarray], size: int, shape: tuple[int, int]
) -> tuple[np.ndarray, list[LetterboxMeta]]:
    """BGR images -> float32 (B, 3, H, W) RGB in [0, 1] as Ultralytics' validation loader makes them: the long side
    resized to ``size`` (the short side rounded up), then centred without scaling up in the batch's ``shape``."""
    batch, metas = [], []
    for img in images:
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        h0, w0 = img.shape[:2]
        r = size / max(h0, w0)
        if r != 1:
            img = cv2.resize(img, (min(math.ceil(w0 * r), size), min(math.ceil(h0 * r), size)),
                             interpolation=cv2.INTER_LINEAR)  # fmt: skip
        h1, w1 = img.shape[:2]
        r2 = min(shape[0] / h1, shape[1] / w1, 1.0)
        nw, nh = max(round(w1 * r2), 1), max(round(h1 * r2), 1)
        if (nw, nh) != (w1, h1):
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        dw, dh = (shape[1] - nw) / 2, (shape[0] - nh) / 2
        top, bottom, left, right = round(dh - 0.1), round(dh + 0.1), round(dw - 0.1), round(dw + 0.1)
        img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
        batch.append(img[:, :, ::-1].transpose(2, 0, 1))
        # each side's own scale: rounding the short side up stretches the image a little (0.1% for 640x512 at 256),
        # which a single gain would carry into every box (Ultralytics scores in the network input, where it does not)
        metas.append(LetterboxMeta(ratio=nh / h0, left=left, top=top, orig_h=h0, orig_w=w0, ratio_w=nw / w0))
    return np.ascontiguousarray(np.stack(batch), dtype=np.float32) / 255.0, metas


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
    clip: bool = True,
) -> list[np.ndarray]:
    """NMS (class-aware, multi-label) and mapping back to original pixels: the bundle's own postprocessing
    (:func:`detkd.infer.decode.postprocess`) with torchvision's NMS and the evaluation threshold.

    Returns:
        One (n, 6) array per image: x1, y1, x2, y2, score, class.
    """
    return bundle_postprocess(
        raw, list(metas), end2end=end2end, conf=conf, iou=iou, max_det=max_det, nms_fn=_torchvision_nms, clip=clip
    )
