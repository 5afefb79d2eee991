"""Inference for evaluation and export checks: letterbox preprocessing, predictors, NMS postprocessing.

The same preprocessing and postprocessing serve PyTorch and every exported runtime, so differences in mAP between
them come from the model conversion, not from the pipeline. Preprocessing matches Ultralytics' validation: RGB,
the long side scaled to ``imgsz`` (up or down, as Ultralytics' validation loader does), letterboxed to a square with
pad value 114, scaled to [0, 1].
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np
import torch
from torch import nn
from torchvision.ops import nms

from detkd.errors import InputFileError
from detkd.export.standalone import LetterboxMeta, letterbox, preprocess
from detkd.export.standalone import postprocess as bundle_postprocess

__all__ = ["LetterboxMeta", "Predictor", "TorchPredictor", "letterbox", "postprocess", "preprocess", "read_image"]


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
