"""Where each KD term applies: position masks built from the batch's ground truth, the teacher and the assigner.

The losses take masks as plain tensors; this module is the one place that decides them from the config, so the
choice (all positions, ground-truth boxes, teacher-confident anchors, assigner foreground) stays an explicit
option and never hides inside a loss.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from detkd.config import FeatureKDConfig
from detkd.losses.masks import fgd_weights, fine_grained_masks, gt_box_masks, split_levels
from detkd.methods import get_method
from detkd.types import TeacherOutputs


def gt_boxes_xyxy(batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """The batch's ground-truth boxes as (N, 4) xyxy input pixels, with their (N,) image indices."""
    img = batch["img"]
    h, w = img.shape[-2:]
    xywh = batch["bboxes"].to(img.device).float() * torch.tensor([w, h, w, h], device=img.device)
    xyxy = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), dim=1)
    return xyxy, batch["batch_idx"].to(img.device).view(-1)


def teacher_confidence(teacher: TeacherOutputs, branch: str = "one2many") -> Tensor:
    """(B, A) the teacher's max class probability per anchor."""
    head = teacher.heads.get(branch, teacher.heads["one2many"])
    return head.cls_logits.detach().float().sigmoid().amax(dim=1)


def feature_masks(
    cfg: FeatureKDConfig,
    batch: dict[str, Any],
    teacher: TeacherOutputs,
    grids: list[tuple[int, int]],
    fg_masks: dict[str, Tensor],
) -> list[Tensor] | None:
    """Per-level masks for the configured feature method (None: every position), as its registry entry says
    (:attr:`detkd.methods.Method.masks`)."""
    strides = [s.stride for s in teacher.specs]
    batch_size = int(batch["img"].shape[0])
    kind = get_method("feature", cfg.method).masks
    if callable(kind):
        return kind(cfg.options, batch, teacher, grids, fg_masks)
    if kind == "none":
        return None
    if kind == "fgd":
        boxes, idx = gt_boxes_xyxy(batch)
        return [torch.stack(pair, dim=1) for pair in fgd_weights(boxes, idx, batch_size, grids, strides)]
    if kind == "fine_grained":
        o = cfg.options
        boxes, idx = gt_boxes_xyxy(batch)
        return fine_grained_masks(
            boxes,
            idx,
            batch_size,
            grids,
            strides,
            thresh=o.thresh,
            anchor_scale=o.anchor_scale,
            anchor_ratios=tuple(o.anchor_ratios),
        )
    positions = cfg.options.positions  # masks: positions (mse, pkd)
    if positions == "all":
        return None
    if positions == "teacher":
        return split_levels(teacher_confidence(teacher), grids)
    if positions == "assigner":
        return split_levels(fg_masks["one2many"].float(), grids)
    boxes, idx = gt_boxes_xyxy(batch)
    return gt_box_masks(boxes, idx, batch_size, grids, strides)


def head_masks(
    positions: str, teacher_conf: float, teacher: TeacherOutputs, fg_masks: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Per branch (B, A) anchors for logit or box KD; empty for ``all``."""
    if positions == "all":
        return {}
    if positions == "assigner":
        return dict(fg_masks)
    return {name: (teacher_confidence(teacher, name) >= teacher_conf).float() for name in fg_masks}


def unlabeled_box_masks(
    masks: dict[str, Tensor], positions: str, teacher_conf: float, teacher: TeacherOutputs, labelled: Tensor | None
) -> dict[str, Tensor]:
    """Box-KD anchors on unlabeled images: where the assigner decides (``assigner``), an unlabeled image has
    foreground only at its pseudo-labels; there box KD also applies where the teacher is confident
    (``teacher_conf``), so the teacher's boxes teach on images without labels too."""
    if labelled is None or positions != "assigner" or bool(labelled.all()):
        return masks
    out = {}
    for name, mask in masks.items():
        confident = (teacher_confidence(teacher, name) >= teacher_conf).to(mask.dtype)
        unl = (~labelled).to(mask.device).view(-1, 1)
        out[name] = torch.where(unl, torch.maximum(mask.to(confident.dtype), confident), mask.to(confident.dtype))
    return out


def ltrb_targets(target_bboxes: Tensor, anchor_points: Tensor, stride_tensor: Tensor) -> Tensor:
    """Assigned ground-truth boxes (B, A, 4) xyxy pixels as (B, 4, A) ltrb distances in grid units.

    >>> box = torch.tensor([[[0.0, 0.0, 32.0, 16.0]]])
    >>> ltrb_targets(box, torch.tensor([[1.5, 0.5]]), torch.tensor([[8.0]]))[0, :, 0]
    tensor([1.5000, 0.5000, 2.5000, 1.5000])
    """
    grid = target_bboxes / stride_tensor.view(1, -1, 1)
    a = anchor_points.unsqueeze(0)
    return torch.cat((a - grid[..., :2], grid[..., 2:] - a), dim=-1).permute(0, 2, 1)
