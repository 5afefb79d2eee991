"""Teachers whose predictions are detections (two-stage, query-based) as dense targets on the student's grid."""

from __future__ import annotations

import torch
from torch import Tensor

from detkd.types import HeadOutputs


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
    from detkd.teachers.soft import SoftBoxes, soft_to_dense

    device = detections[0]["boxes"].device if detections else torch.device("cpu")
    boxes, idx, probs = [], [], []
    for i, det in enumerate(detections):
        b = det["boxes"].float().to(device)
        if "probs" in det:
            p = det["probs"].float().to(device)
        else:
            p = torch.zeros(len(b), num_classes, device=device)
            p[torch.arange(len(b), device=device), det["labels"].long().to(device)] = det["scores"].float().to(device)
        boxes.append(b)
        probs.append(p)
        idx.append(torch.full((len(b),), i, dtype=torch.long, device=device))
    if not detections:
        return soft_to_dense(SoftBoxes(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                                       torch.zeros(0, num_classes)), 0, image_hw, strides)  # fmt: skip
    soft = SoftBoxes(torch.cat(boxes), torch.cat(idx), torch.cat(probs))
    return soft_to_dense(soft, len(detections), image_hw, strides)
