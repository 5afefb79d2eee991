"""Post-processing: raw detector outputs decoded to boxes in original pixels (class-aware NMS in numpy)."""

from __future__ import annotations

from typing import Any

import numpy as np

from detkd.infer.letterboxing import LetterboxMeta

MAX_NMS_CANDIDATES = 30000


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, highest score first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def postprocess(
    raw: np.ndarray,
    metas: list[LetterboxMeta],
    *,
    end2end: bool = False,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    nms_fn: Any = None,
    clip: bool = True,
) -> list[np.ndarray]:
    """Raw predictions -> one (n, 6) array per image (x1, y1, x2, y2, score, class) in original pixels (clipped
    to the image unless ``clip`` is false).

    ``raw`` is (B, 4 + nc, A) (xywh in input pixels + class probabilities; class-aware, multi-label NMS here) or,
    for end-to-end heads, (B, N, 6) (xyxy, score, class; no NMS needed). ``nms_fn(boxes, scores, iou)`` replaces
    the numpy :func:`nms` (detkd's evaluation passes torchvision's, faster at conf 0.001).
    """
    results = []
    for b, meta in enumerate(metas):
        p = np.asarray(raw[b], dtype=np.float32)
        if end2end:
            p = p[p[:, 4] > conf]
            p = p[np.argsort(-p[:, 4], kind="stable")[:max_det]]
            boxes, scores, classes = p[:, :4], p[:, 4], p[:, 5]
        else:
            p = p.T  # (A, 4 + nc)
            a_idx, c_idx = np.nonzero(p[:, 4:] > conf)
            scores = p[a_idx, 4 + c_idx]
            if scores.size > MAX_NMS_CANDIDATES:
                top = np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES]
                a_idx, c_idx, scores = a_idx[top], c_idx[top], scores[top]
            xy, wh = p[a_idx, :2], p[a_idx, 2:4]
            boxes = np.concatenate((xy - wh / 2, xy + wh / 2), axis=1)
            # class-aware NMS in one call: boxes of different classes are moved apart so that they never overlap
            offset = c_idx[:, None].astype(np.float32) * (float(boxes.max(initial=0.0)) + 1.0)
            keep = (nms_fn or nms)(boxes + offset, scores, iou)[:max_det]
            boxes, scores, classes = boxes[keep], scores[keep], c_idx[keep].astype(np.float32)
        boxes = boxes.copy()
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - meta.left) / (meta.ratio_w or meta.ratio)
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - meta.top) / meta.ratio
        if clip:
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, meta.orig_w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, meta.orig_h)
        results.append(np.concatenate((boxes, scores[:, None], classes[:, None]), axis=1).astype(np.float32))
    return results
