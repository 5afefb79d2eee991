"""Ultralytics' definition of mAP (what ``yolo val`` and ``results.csv`` report), and its plots, from detkd's
detections: so one ``detkd eval`` gives both numbers and a user can compare either with the tool they know.

pycocotools and Ultralytics score the same detections differently: COCO interpolates precision at 101 recall
points and matches each class's detections greedily by score over all images; Ultralytics integrates an
interpolated precision-recall curve (``ap_per_class``) and matches per image. The matching here is detkd's own
(greedy: each detection, in descending score, claims the best still-unclaimed ground truth of its class per IoU
threshold, the policy of Ultralytics' default validator); the curve integration, the P/R/F1 at the best mean F1
and the plots are Ultralytics' ``ap_per_class`` and ``ConfusionMatrix``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


def box_iou(a: np.ndarray, b: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """IoU of every box in ``a`` (M, 4+) with every box in ``b`` (N, 4+), xyxy in the first four columns; (M, N).

    >>> box_iou(np.array([[0, 0, 2, 2]]), np.array([[1, 0, 3, 2], [0, 0, 2, 2]])).round(3).tolist()
    [[0.333, 1.0]]
    """
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inter = (rb - lt).clip(0).prod(2)
    area_a = (a[:, 2:4] - a[:, :2]).clip(0).prod(1)
    area_b = (b[:, 2:4] - b[:, :2]).clip(0).prod(1)
    return inter / (area_a[:, None] + area_b[None, :] - inter + eps)


def match(det: np.ndarray, gt_boxes: np.ndarray, gt_cls: np.ndarray) -> np.ndarray:
    """Which detections are true positives at each IoU threshold: (N, 10) bool for ``det`` (N, 6: xyxy, score,
    class) against one image's ground truth. Each detection, in descending score, takes the unclaimed ground truth
    of its class it overlaps most, separately per threshold.

    >>> gt = np.array([[0, 0, 10, 10]], float)
    >>> det = np.array([[0, 0, 10, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0], [0, 0, 10, 10, 0.7, 1]])
    >>> match(det, gt, np.array([0]))[:, 0].tolist()  # the duplicate and the wrong class are false positives
    [True, False, False]
    """
    correct = np.zeros((len(det), len(IOU_THRESHOLDS)), dtype=bool)
    if not len(det) or not len(gt_boxes):
        return correct
    order = np.argsort(-det[:, 4], kind="stable")
    iou = box_iou(gt_boxes, det[order, :4]) * (gt_cls[:, None] == det[order, 5][None, :])
    claimed = np.zeros((len(gt_boxes), len(IOU_THRESHOLDS)), dtype=bool)
    for j in np.flatnonzero((iou >= IOU_THRESHOLDS[0]).any(0)):
        available = np.where(claimed, 0.0, iou[:, j, None])
        k = available.argmax(0)
        hit = available[k, np.arange(len(IOU_THRESHOLDS))] >= IOU_THRESHOLDS
        correct[order[j]] = hit
        claimed[k, np.arange(len(IOU_THRESHOLDS))] |= hit
    return correct


def yolo_metrics(
    detections: Sequence[np.ndarray],
    ground_truth: Sequence[tuple[np.ndarray, np.ndarray]],
    names: Mapping[int, str],
    *,
    plot_dir: Path | None = None,
) -> dict[str, Any]:
    """Ultralytics' precision, recall, mAP50 and mAP50-95 (and per class mAP50-95) over a split.

    Args:
        detections: per image, (n, 6) arrays (xyxy, score, class index) in original pixels.
        ground_truth: per image, (boxes (m, 4) xyxy in original pixels, class indices (m,)).
        names: class index -> name.
        plot_dir: where to draw Ultralytics' PR, F1, P and R curves and the confusion matrix (None: no plots).
    """
    from ultralytics.utils.metrics import ConfusionMatrix, ap_per_class

    tp, conf, pred_cls, target_cls = [], [], [], []
    matrix = ConfusionMatrix(names=dict(names)) if plot_dir is not None else None
    for det, (boxes, cls) in zip(detections, ground_truth, strict=True):
        tp.append(match(det, boxes, cls))
        conf.append(det[:, 4])
        pred_cls.append(det[:, 5])
        target_cls.append(cls)
        if matrix is not None:
            import torch

            matrix.process_batch(
                {"bboxes": torch.from_numpy(det[:, :4]).float(), "conf": torch.from_numpy(det[:, 4]).float(),
                 "cls": torch.from_numpy(det[:, 5]).float()},
                {"bboxes": torch.from_numpy(boxes).float(), "cls": torch.from_numpy(cls).float()},
            )  # fmt: skip
    targets = np.concatenate(target_cls) if target_cls else np.zeros(0)
    zero: dict[str, Any] = {"precision": 0.0, "recall": 0.0, "mAP50": 0.0, "mAP50-95": 0.0,
                            "per_class": {n: None for n in names.values()}}  # fmt: skip
    if not targets.size:
        return zero
    plot = plot_dir is not None
    if plot_dir is not None:
        plot_dir.mkdir(parents=True, exist_ok=True)
    out = ap_per_class(np.concatenate(tp), np.concatenate(conf), np.concatenate(pred_cls), targets,
                       plot=plot, save_dir=plot_dir or Path(), names=dict(names))  # fmt: skip
    p, r, ap, classes = out[2], out[3], out[5], out[6]
    if matrix is not None:
        matrix.plot(save_dir=plot_dir, normalize=True)
        matrix.plot(save_dir=plot_dir, normalize=False)
    per_class: dict[str, float | None] = {n: None for n in names.values()}  # None: no ground truth of the class
    for k, c in enumerate(classes):
        per_class[names[int(c)]] = float(ap[k].mean())
    if not len(classes):
        return zero
    return {
        "precision": float(p.mean()),
        "recall": float(r.mean()),
        "mAP50": float(ap[:, 0].mean()),
        "mAP50-95": float(ap.mean()),
        "per_class": per_class,
    }
