"""Letterbox pre-processing: images to the network input, and the metadata that maps boxes back.

The same code runs in detkd's evaluation, in the export gates and, copied into each deployment bundle's
``infer.py``, on the device; it needs numpy and OpenCV only.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class LetterboxMeta:
    """How an image was placed in the network input: ``input = original * ratio + (left, top)`` (``x`` scaled by
    ``ratio_w`` where a resize rounded the two sides differently, as Ultralytics' rectangular batches do)."""

    ratio: float
    left: int
    top: int
    orig_h: int
    orig_w: int
    ratio_w: float | None = None


def letterbox(img: np.ndarray, size: int, *, scaleup: bool = False) -> tuple[np.ndarray, LetterboxMeta]:
    """Resize keeping the aspect ratio and pad to ``size`` x ``size`` (centred).

    >>> out, meta = letterbox(np.zeros((50, 100, 3), np.uint8), 64, scaleup=True)
    >>> out.shape, meta.ratio, meta.top
    ((64, 64, 3), 0.64, 16)
    """
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    if not scaleup:
        r = min(r, 1.0)
    nw, nh = round(w * r), round(h * r)
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    left, top = (size - nw) // 2, (size - nh) // 2
    out = cv2.copyMakeBorder(
        img, top, size - nh - top, left, size - nw - left, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    # each side's own scale: the rounding of a side's pixel count stretches it by up to half a pixel
    return out, LetterboxMeta(ratio=nh / h, left=left, top=top, orig_h=h, orig_w=w, ratio_w=nw / w)


def preprocess(images: list[np.ndarray], size: int) -> tuple[np.ndarray, list[LetterboxMeta]]:
    """BGR uint8 images -> float32 (B, 3, size, size) RGB in [0, 1] plus their letterbox metadata.

    The long side is scaled to ``size`` (up or down), as Ultralytics' validation and detkd's evaluation do.
    """
    batch, metas = [], []
    for img in images:
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        boxed, meta = letterbox(img, size, scaleup=True)
        batch.append(boxed[:, :, ::-1].transpose(2, 0, 1))
        metas.append(meta)
    return np.ascontiguousarray(np.stack(batch), dtype=np.float32) / 255.0, metas
