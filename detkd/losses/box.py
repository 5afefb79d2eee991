"""Box-regression distillation: LD on DFL distributions and IoU + L1 to the teacher's boxes."""

from __future__ import annotations

import torch
from torch import Tensor

from detkd.losses._checks import check_finite, check_same_shape, check_temperature, masked_reduce, softened_kl, upcast


def ld_loss(
    student_dist: Tensor,
    teacher_dist: Tensor,
    *,
    reg_max: int,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Localization distillation (Zheng et al., CVPR 2022): KL between softened DFL edge distributions.

    Each box edge is a distribution over ``reg_max`` distance bins. Per anchor:

    ``L_a = T^2 / 4 * sum_{edge} KL(softmax(t_edge / T) || softmax(s_edge / T))``

    averaged over anchors weighted by ``mask`` (typically the foreground). Zero when student equals teacher.

    Args:
        student_dist: student bin logits.
        teacher_dist: teacher bin logits (constants).
        reg_max: number of bins per edge (> 1).
        temperature: T > 0.
        mask: optional (B, A) weights per anchor.
        reduction: ``"mean"`` or ``"sum"``.

    Shape:
        student_dist, teacher_dist: (B, 4 * reg_max, A). Returns a scalar.

    >>> import torch
    >>> s = torch.randn(2, 4 * 8, 5)
    >>> float(ld_loss(s, s.clone(), reg_max=8))
    0.0
    """
    check_same_shape("ld_loss", student=student_dist, teacher=teacher_dist)
    if reg_max < 2 or student_dist.dim() != 3 or student_dist.shape[1] != 4 * reg_max:
        raise ValueError(f"ld_loss: expected (B, 4*reg_max, A) with reg_max > 1, got {tuple(student_dist.shape)}")
    check_temperature("ld_loss", temperature)
    check_finite("ld_loss", student=student_dist, teacher=teacher_dist)
    b, _, a = student_dist.shape
    t = temperature
    kl = softened_kl(student_dist.view(b, 4, reg_max, a), teacher_dist.view(b, 4, reg_max, a), t, dim=2)
    kl = kl.mean(dim=1)  # (B, A)
    if mask is not None:
        check_same_shape("ld_loss", per_anchor=kl, mask=mask)
    return masked_reduce(kl, mask, reduction) * (t * t)


def generalized_iou(a: Tensor, b: Tensor, eps: float = 1e-7, *, plain: bool = False) -> Tensor:
    """GIoU of paired xyxy boxes along dim 1 (Rezatofighi et al., CVPR 2019); plain IoU when ``plain``.

    Shape:
        a, b: (B, 4, A). Returns (B, A).

    >>> import torch
    >>> box = torch.tensor([[[0.0], [0.0], [2.0], [2.0]]])
    >>> float(generalized_iou(box, box))
    1.0
    """
    ax1, ay1, ax2, ay2 = a.unbind(dim=1)
    bx1, by1, bx2, by2 = b.unbind(dim=1)
    inter = (torch.min(ax2, bx2) - torch.max(ax1, bx1)).clamp(min=0) * (
        torch.min(ay2, by2) - torch.max(ay1, by1)
    ).clamp(min=0)
    area_a = (ax2 - ax1).clamp(min=0) * (ay2 - ay1).clamp(min=0)
    area_b = (bx2 - bx1).clamp(min=0) * (by2 - by1).clamp(min=0)
    union = area_a + area_b - inter + eps
    if plain:
        return inter / union
    hull = (torch.max(ax2, bx2) - torch.min(ax1, bx1)) * (torch.max(ay2, by2) - torch.min(ay1, by1)) + eps
    return inter / union - (hull - union) / hull


def box_iou_l1_loss(
    student_boxes: Tensor,
    teacher_boxes: Tensor,
    *,
    mask: Tensor | None = None,
    scale: Tensor | None = None,
    l1_weight: float = 0.5,
    kind: str = "giou",
    reduction: str = "mean",
) -> Tensor:
    """Regression to the teacher's decoded boxes, for heads without DFL bins (e.g. YOLO26) or mixed pairs.

    ``L_a = (1 - GIoU(s_a, t_a)) + l1_weight * mean_k |s_ak - t_ak| / scale_a``  (``kind="iou"``: plain IoU)

    averaged over anchors weighted by ``mask``. ``scale`` (e.g. each anchor's stride) puts the L1 term in grid
    units so small and large objects weigh alike. Zero when student equals teacher.

    Shape:
        student_boxes, teacher_boxes: (B, 4, A) xyxy; mask: (B, A); scale: (A,) or (A, 1).

    >>> import torch
    >>> s = torch.tensor([[[0.0], [0.0], [2.0], [2.0]]]); t = torch.tensor([[[0.0], [0.0], [2.0], [4.0]]])
    >>> round(float(box_iou_l1_loss(s, t, l1_weight=0.0)), 4)
    0.5
    """
    check_same_shape("box_iou_l1_loss", student=student_boxes, teacher=teacher_boxes)
    if student_boxes.dim() != 3 or student_boxes.shape[1] != 4:
        raise ValueError(f"box_iou_l1_loss: expected (B, 4, A) boxes, got {tuple(student_boxes.shape)}")
    check_finite("box_iou_l1_loss", student=student_boxes, teacher=teacher_boxes)
    if kind not in ("giou", "iou"):
        raise ValueError(f"box_iou_l1_loss: kind must be 'giou' or 'iou', got {kind!r}")
    s, t = upcast(student_boxes), upcast(teacher_boxes.detach())
    per_anchor = 1.0 - generalized_iou(s, t, plain=kind == "iou")
    if l1_weight:
        l1 = (s - t).abs().mean(dim=1)
        if scale is not None:
            l1 = l1 / scale.to(l1.dtype).reshape(1, -1).clamp(min=1e-6)
        per_anchor = per_anchor + l1_weight * l1
    if mask is not None:
        check_same_shape("box_iou_l1_loss", per_anchor=per_anchor, mask=mask)
    return masked_reduce(per_anchor, mask, reduction)


def bounded_l2_loss(
    student_dist: Tensor,
    teacher_dist: Tensor,
    target_dist: Tensor,
    *,
    margin: float = 0.0,
    mask: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Teacher-bounded regression (Chen et al., NeurIPS 2017): the teacher is an upper bound, not a target.

    With ``e_s = mean_k (s_ak - y_ak)^2`` and ``e_t = mean_k (t_ak - y_ak)^2`` (squared error of student and teacher
    box-edge distances to the ground truth ``y``, averaged over the four edges), each anchor costs ``e_s`` if
    ``e_s + margin > e_t`` and 0 otherwise: the student is pulled towards the ground truth only where it is not
    already better than the teacher by ``margin``. This keeps a teacher's regression mistakes out of the student.
    Zero when student equals teacher (margin 0) and wherever the student beats the teacher by the margin.

    Shape:
        student_dist, teacher_dist, target_dist: (B, 4, A) ltrb distances (grid units); mask: (B, A).

    >>> y = torch.zeros(1, 4, 2); t = torch.ones(1, 4, 2)
    >>> s = torch.tensor([[[0.5, 2.0]] * 4])  # anchor 0 beats the teacher, anchor 1 does not
    >>> float(bounded_l2_loss(s, t, y, reduction="sum"))
    4.0
    """
    check_same_shape("bounded_l2_loss", student=student_dist, teacher=teacher_dist, target=target_dist)
    if student_dist.dim() != 3 or student_dist.shape[1] != 4:
        raise ValueError(f"bounded_l2_loss: expected (B, 4, A) distances, got {tuple(student_dist.shape)}")
    if margin < 0:
        raise ValueError(f"bounded_l2_loss: margin must be >= 0, got {margin}")
    check_finite("bounded_l2_loss", student=student_dist, teacher=teacher_dist, target=target_dist)
    y = upcast(target_dist.detach())
    e_s = (upcast(student_dist) - y).pow(2).mean(dim=1)  # (B, A): mean over the four edges
    e_t = (upcast(teacher_dist.detach()) - y).pow(2).mean(dim=1)
    per_anchor = e_s * (e_s.detach() + margin > e_t).to(e_s.dtype)
    if mask is not None:
        check_same_shape("bounded_l2_loss", per_anchor=per_anchor, mask=mask)
    return masked_reduce(per_anchor, mask, reduction)
