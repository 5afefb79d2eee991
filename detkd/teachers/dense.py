"""Teachers whose predictions are detections (two-stage, query-based) as dense targets on the student's grid."""

from __future__ import annotations

import torch
from torch import Tensor

from detkd.types import HeadOutputs

_EPS = 1e-6


def detections_to_dense(
    detections: list[dict[str, Tensor]], num_classes: int, image_hw: tuple[int, int], strides: tuple[int, ...]
) -> HeadOutputs:
    """A detector's final detections as dense targets on an anchor-free student's grid.

    Rule: each student anchor point (cell centres of every level) takes the highest-scoring teacher detection whose
    box contains it. The detection's class gets the detection's score as the target probability, every other
    class ~0 (or, when detections carry ``probs`` (D, C), e.g. a DETR query's sigmoid scores, its whole class
    vector); the detection's box becomes left/top/right/bottom distances from the point in grid units
    (``reg_max = 1``). Points inside no detection are background (all classes ~0) and carry no box target
    (``box_valid`` is 0 there, so box KD skips them).

    >>> det = [{"boxes": torch.tensor([[0.0, 0.0, 16.0, 16.0]]), "scores": torch.tensor([0.9]),
    ...         "labels": torch.tensor([1])}]
    >>> out = detections_to_dense(det, 2, (16, 16), (8,))
    >>> [round(v, 2) for v in out.cls_logits.sigmoid()[0, 1].tolist()]
    [0.9, 0.9, 0.9, 0.9]
    >>> out.boxes_xyxy()[0, :, 0].tolist()
    [0.0, 0.0, 16.0, 16.0]
    """
    h, w = image_hw
    points, stride_col = [], []
    for s in strides:
        gy, gx = torch.meshgrid(torch.arange(h // s) + 0.5, torch.arange(w // s) + 0.5, indexing="ij")
        points.append(torch.stack((gx, gy), dim=-1).reshape(-1, 2))
        stride_col.append(torch.full((points[-1].shape[0], 1), float(s)))
    device = detections[0]["boxes"].device if detections else torch.device("cpu")
    anchor_points = torch.cat(points).to(device)
    stride_tensor = torch.cat(stride_col).to(device)
    pix = anchor_points * stride_tensor  # (A, 2) in pixels
    a = pix.shape[0]
    cls, box, valid = [], [], []
    for det in detections:
        probs = torch.full((num_classes, a), _EPS, device=device)
        ltrb = torch.zeros(4, a, device=device)
        hit = torch.zeros(a, dtype=torch.bool, device=device)
        boxes, scores, labels = det["boxes"].float(), det["scores"].float(), det["labels"].long()
        if len(boxes):
            inside = (
                (pix[:, None, 0] >= boxes[None, :, 0])
                & (pix[:, None, 0] <= boxes[None, :, 2])
                & (pix[:, None, 1] >= boxes[None, :, 1])
                & (pix[:, None, 1] <= boxes[None, :, 3])
            )  # (A, D)
            ranked = torch.where(inside, scores[None, :], torch.full_like(inside, -1.0, dtype=scores.dtype))
            best_score, best = ranked.max(dim=1)
            hit = best_score > 0
            idx = torch.nonzero(hit).squeeze(1)
            if "probs" in det:
                probs[:, idx] = det["probs"].float()[best[idx]].t().clamp(_EPS, 1 - _EPS)
            else:
                probs[labels[best[idx]], idx] = best_score[idx].clamp(_EPS, 1 - _EPS)
            b = boxes[best[idx]]
            p, st = pix[idx], stride_tensor[idx]
            ltrb[:, idx] = (torch.cat((p - b[:, :2], b[:, 2:] - p), dim=1) / st).t()
        cls.append(torch.logit(probs))
        box.append(ltrb)
        valid.append(hit)
    return HeadOutputs(
        cls_logits=torch.stack(cls),
        box_raw=torch.stack(box),
        reg_max=1,
        anchor_points=anchor_points,
        stride_tensor=stride_tensor,
        box_valid=torch.stack(valid),
    )
