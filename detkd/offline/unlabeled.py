"""Unlabeled images in a KD run: the detection loss leaves them out except at their pseudo-labels.

Ultralytics reads an image without labels as pure background: its class loss pushes every anchor towards "no
object", which on unlabeled footage teaches the student that the objects in it are not there. Here an image known
to be unlabeled reaches the detection loss only through its *pseudo-labels* (the teacher's detections above a
confidence threshold, per class if wished, used as ground truth): the assigner matches anchors to them as to any
box, and the class loss of that image counts at those anchors only (:func:`labelled_only`); with no pseudo-labels
it contributes nothing. Everywhere else on it the student learns from the teacher's soft targets (logit and box KD
over all anchors, as on labelled images).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from detkd.teachers.soft import SoftBoxes, dense_to_detections
from detkd.types import HeadOutputs


def class_thresholds(conf: float, per_class: Sequence[float], nc: int, device: torch.device) -> Tensor:
    """(nc,) confidence threshold of each class: ``per_class`` when given (one per class), else ``conf``."""
    if per_class:
        return torch.tensor([float(v) for v in per_class], device=device)
    return torch.full((nc,), float(conf), device=device)


def pseudo_from_soft(soft: SoftBoxes, unlabeled: Tensor, thresholds: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Hard labels from soft boxes of unlabeled images: the top class of each box whose probability reaches its
    class's threshold. Returns ``(cls (n, 1), boxes (n, 4) xyxy pixels, batch_idx (n,))``.

    >>> s = SoftBoxes(torch.tensor([[0.0, 0, 8, 8], [1.0, 1, 9, 9]]), torch.tensor([0, 1]),
    ...               torch.tensor([[0.9, 0.1], [0.2, 0.3]]))
    >>> cls, boxes, idx = pseudo_from_soft(s, torch.tensor([True, True]), torch.tensor([0.5, 0.5]))
    >>> cls.view(-1).tolist(), idx.tolist()
    ([0.0], [0])
    """
    if len(soft) == 0:
        z = soft.boxes.new_zeros((0,))
        return z.view(0, 1), soft.boxes.new_zeros((0, 4)), z.long()
    score, label = soft.probs.float().max(dim=1)
    keep = (score >= thresholds[label]) & unlabeled[soft.batch_idx.long()]
    return label[keep].float().view(-1, 1), soft.boxes[keep].float(), soft.batch_idx[keep].long()


def pseudo_from_head(
    head: HeadOutputs, unlabeled: Tensor, thresholds: Tensor, max_det: int = 100
) -> tuple[Tensor, ...]:
    """Hard labels for the unlabeled images of a batch from a live teacher's dense outputs (NMS at IoU 0.7)."""
    dets = dense_to_detections(head, conf=float(thresholds.min()), max_det=max_det)
    boxes, probs, idx = [], [], []
    for i, (b, p, _, _) in enumerate(dets):
        if bool(unlabeled[i]):
            boxes.append(b)
            probs.append(p)
            idx.append(torch.full((len(b),), i, device=b.device, dtype=torch.long))
    if not boxes:
        device = head.cls_logits.device
        return torch.zeros(0, 1, device=device), torch.zeros(0, 4, device=device), torch.zeros(0, dtype=torch.long)
    soft = SoftBoxes(torch.cat(boxes), torch.cat(idx), torch.cat(probs))
    return pseudo_from_soft(soft, unlabeled, thresholds)


def add_hard_labels(batch: dict[str, Any], cls: Tensor, boxes_xyxy: Tensor, batch_idx: Tensor) -> int:
    """Append pseudo-labels (xyxy pixels of the batch's images) to the batch's ground truth; returns how many."""
    if len(cls) == 0:
        return 0
    h, w = (int(v) for v in batch["img"].shape[-2:])
    b = boxes_xyxy.to(batch["bboxes"].device)
    b[:, [0, 2]] = b[:, [0, 2]].clamp(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clamp(0, h)
    xywhn = torch.stack(((b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h, (b[:, 2] - b[:, 0]) / w,
                         (b[:, 3] - b[:, 1]) / h), dim=1)  # fmt: skip
    ok = (xywhn[:, 2] > 0) & (xywhn[:, 3] > 0)
    batch["cls"] = torch.cat((batch["cls"].view(-1, 1), cls.to(batch["cls"])[ok]))
    batch["bboxes"] = torch.cat((batch["bboxes"], xywhn[ok].to(batch["bboxes"])))
    batch["batch_idx"] = torch.cat((batch["batch_idx"].view(-1), batch_idx.to(batch["batch_idx"])[ok]))
    return int(ok.sum())


@contextlib.contextmanager
def labelled_only(losses: Sequence[Any], labelled: Tensor | None) -> Iterator[None]:
    """While inside, each Ultralytics detection loss in ``losses`` counts the class loss of an image that is not
    ``labelled`` (B,) only at the anchors the assigner matched to its (pseudo-)labels; box and DFL losses already
    count matched anchors only. The losses are patched on these instances only, and restored on exit."""
    if labelled is None or bool(labelled.all()):
        yield
        return
    saved = []
    for loss in losses:
        assigner, bce = loss.assigner, loss.bce
        seen: dict[str, Tensor] = {}

        def assign(*args: Any, _orig: Any = assigner, _seen: dict[str, Tensor] = seen, **kwargs: Any) -> Any:
            out = _orig(*args, **kwargs)
            _seen["fg"] = out[3]
            return out

        def masked_bce(pred: Tensor, target: Tensor, _orig: Any = bce, _seen: dict[str, Tensor] = seen) -> Tensor:
            value = _orig(pred, target)
            keep = labelled.to(value.device).view(-1, 1, 1)
            weight = torch.where(keep, torch.ones_like(value[..., :1]), _seen["fg"].unsqueeze(-1).to(value.dtype))
            return value * weight

        saved.append((loss, assigner, bce))
        loss.assigner, loss.bce = assign, masked_bce
    try:
        yield
    finally:
        for loss, assigner, bce in saved:
            loss.assigner, loss.bce = assigner, bce
