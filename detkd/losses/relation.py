"""Relation-based feature KD: the student matches the relations the teacher holds, not the teacher's values.

Two relations, neither needing the student's channels to match the teacher's (so no adapter):

* **between instances**, per pyramid level (in the spirit of relational KD, Park et al., CVPR 2019, and the
  instance relations of general-instance distillation, Dai et al., CVPR 2021): each instance (a ground-truth box,
  or a teacher detection) is embedded by RoIAlign of the level's map over its box; within each image, the
  pairwise relation of its instances is matched.

  - ``distance``: ``D_ij = ||e_i - e_j|| / mean_{k!=l} ||e_k - e_l||`` (scale-free), loss
    ``mean_{i!=j} smoothL1(D^s_ij - D^t_ij)``;
  - ``cosine``: ``G_ij = cos(e_i, e_j)``, loss ``mean_{i!=j} (G^s_ij - G^t_ij)^2``.

* **between levels**: each level's spatial energy map ``a_l = mean_c x^2``, pooled to the coarsest grid, centred
  and L2-normalised per image, gives the level-by-level correlation ``R_lm = <a_l, a_m>``; the loss is
  ``mean_{l!=m} (R^s_lm - R^t_lm)^2``: the student learns which levels respond to the same places.

The term is ``mean_levels L_instance + level_weight * L_levels``. Images with fewer than two instances add no
instance relation (the term is then 0, still on the student's graph).
"""

from __future__ import annotations

import typing

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import nms, roi_align

from detkd.losses._checks import check_finite, upcast
from detkd.types import HeadOutputs

DISTANCES = ("distance", "cosine")


def instance_embeddings(maps: Tensor, boxes: Tensor, image_index: Tensor, stride: float, pool: int = 1) -> Tensor:
    """(N, C * pool^2) RoIAlign embeddings of ``boxes`` ((N, 4) xyxy input pixels) on a (B, C, H, W) map of
    ``stride``.

    >>> m = torch.arange(16.0).view(1, 1, 4, 4)
    >>> instance_embeddings(m, torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.tensor([0]), 4.0).tolist()
    [[7.5]]
    """
    rois = torch.cat((image_index.to(boxes.dtype).view(-1, 1), boxes), dim=1).to(maps.dtype)
    pooled = roi_align(maps, rois, output_size=pool, spatial_scale=1.0 / stride, sampling_ratio=2, aligned=True)
    return typing.cast(Tensor, pooled.flatten(1))


def pair_relation(e: Tensor, distance: str) -> Tensor:
    """(n, n) relation of n embeddings: normalised distances or cosine similarities.

    >>> pair_relation(torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]]), "distance")[0].tolist()
    [0.0, 0.75, 1.5]
    """
    if distance == "cosine":
        u = F.normalize(e, dim=1)
        return u @ u.T
    d = torch.cdist(e, e)
    n = e.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=e.device)
    return d / d[off].mean().clamp_min(1e-12)


def _relation_loss(s: Tensor, t: Tensor, distance: str) -> Tensor:
    n = s.shape[0]
    off = ~torch.eye(n, dtype=torch.bool, device=s.device)
    if distance == "cosine":
        return (s[off] - t[off]).pow(2).mean()
    return F.smooth_l1_loss(s[off], t[off], reduction="mean")


def instance_relation_loss(
    student: Tensor,
    teacher: Tensor,
    boxes: Tensor,
    image_index: Tensor,
    stride: float,
    *,
    distance: str = "distance",
    max_instances: int = 64,
    pool: int = 1,
) -> Tensor:
    """The instance-relation term of one level: mean over images with >= 2 instances (the first ``max_instances``
    of each); 0 on the student's graph when there is none."""
    es = instance_embeddings(upcast(student), boxes, image_index, stride, pool)
    et = instance_embeddings(upcast(teacher.detach()), boxes, image_index, stride, pool)
    losses = []
    for b in torch.unique(image_index):
        idx = (image_index == b).nonzero().view(-1)[:max_instances]
        if idx.numel() < 2:
            continue
        losses.append(_relation_loss(pair_relation(es[idx], distance), pair_relation(et[idx], distance), distance))
    if not losses:
        return student.sum() * 0.0
    return torch.stack(losses).mean()


def level_relation(maps: list[Tensor]) -> Tensor:
    """(B, L, L) correlation of the levels' spatial energy maps (pooled to the coarsest grid)."""
    h = min(int(m.shape[-2]) for m in maps)
    w = min(int(m.shape[-1]) for m in maps)
    a = torch.stack([F.adaptive_avg_pool2d(upcast(m).pow(2).mean(1, keepdim=True), (h, w)).flatten(1) for m in maps], 1)
    a = a - a.mean(dim=2, keepdim=True)
    a = F.normalize(a, dim=2)
    return a @ a.transpose(1, 2)


def level_relation_loss(students: list[Tensor], teachers: list[Tensor]) -> Tensor:
    """``mean_{l!=m} (R^s_lm - R^t_lm)^2`` over images; 0 with one level."""
    if len(students) < 2:
        return students[0].sum() * 0.0
    rs, rt = level_relation(students), level_relation([t.detach() for t in teachers])
    off = ~torch.eye(rs.shape[1], dtype=torch.bool, device=rs.device)
    return (rs[:, off] - rt[:, off]).pow(2).mean()


def relation_kd(
    students: list[Tensor],
    teachers: list[Tensor],
    boxes: Tensor,
    image_index: Tensor,
    strides: list[float],
    *,
    names: list[str] | None = None,
    distance: str = "distance",
    level_weight: float = 1.0,
    max_instances: int = 64,
    pool: int = 1,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Relation KD over a pyramid: ``mean_l L_instance(l) + level_weight * L_levels`` and its parts (by level name,
    and ``levels``). Student and teacher maps of one level share a grid (``strides``: their strides); their
    channels may differ. Zero when the student's maps equal the teacher's (or any positive multiple of them).

    >>> s = [torch.randn(1, 4, 8, 8), torch.randn(1, 4, 4, 4)]
    >>> boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [16.0, 16.0, 32.0, 32.0], [0.0, 16.0, 32.0, 32.0]])
    >>> total, parts = relation_kd(s, [3.0 * x for x in s], boxes, torch.zeros(3), [4.0, 8.0], names=["p3", "p4"])
    >>> round(float(total), 6), sorted(parts)
    (0.0, ['levels', 'p3', 'p4'])
    """
    if distance not in DISTANCES:
        raise ValueError(f"relation_kd: distance must be one of {DISTANCES}, got {distance!r}")
    if not (len(students) == len(teachers) == len(strides)):
        raise ValueError("relation_kd: one teacher map and one stride per student map")
    names = names or [f"l{i}" for i in range(len(students))]
    for s, t in zip(students, teachers, strict=True):
        if s.dim() != 4 or t.dim() != 4 or s.shape[0] != t.shape[0] or s.shape[-2:] != t.shape[-2:]:
            raise ValueError(f"relation_kd: student {tuple(s.shape)} and teacher {tuple(t.shape)} need one grid")
        check_finite("relation_kd", student=s, teacher=t)
    boxes = boxes.detach().float()
    image_index = image_index.detach().long().view(-1)
    parts = {
        n: instance_relation_loss(
            s, t, boxes, image_index, st, distance=distance, max_instances=max_instances, pool=pool
        )
        for n, s, t, st in zip(names, students, teachers, strides, strict=True)
    }
    total = torch.stack(list(parts.values())).mean()
    if level_weight > 0:
        parts["levels"] = level_relation_loss(students, teachers)
        total = total + level_weight * parts["levels"]
    return total, parts


def teacher_instances(head: HeadOutputs, *, conf: float, max_instances: int, iou: float = 0.5) -> tuple[Tensor, Tensor]:
    """The teacher's confident detections as instances: per image, anchors with max class probability >= ``conf``,
    NMS at ``iou``, the ``max_instances`` most confident. Returns (N, 4) xyxy pixels and (N,) image indices."""
    with torch.no_grad():
        scores = head.cls_logits.detach().float().sigmoid().amax(dim=1)  # (B, A)
        boxes = head.boxes_xyxy().detach().float().permute(0, 2, 1)  # (B, A, 4)
        out_boxes, out_index = [], []
        for b in range(scores.shape[0]):
            keep = (scores[b] >= conf).nonzero().view(-1)
            if keep.numel() == 0:
                continue
            kept = keep[nms(boxes[b, keep], scores[b, keep], iou)[:max_instances]]
            out_boxes.append(boxes[b, kept])
            out_index.append(torch.full((kept.numel(),), b, device=boxes.device, dtype=torch.long))
        if not out_boxes:
            return boxes.new_zeros(0, 4), torch.zeros(0, dtype=torch.long, device=boxes.device)
        return torch.cat(out_boxes), torch.cat(out_index)
