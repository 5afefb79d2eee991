"""The training criterion: Ultralytics' detection loss + the KD composite, in Ultralytics' criterion protocol.

Ultralytics calls ``model.loss(batch, preds)`` → ``criterion(preds, batch)`` and expects ``(loss_vector, items)``
where ``loss_vector.sum()`` is backpropagated and ``items`` (a dict of detached scalars) is averaged per epoch and
written to ``results.csv``. :class:`KDCriterion` keeps that protocol, so the student runs forward once per step, the
teacher once under ``no_grad``, and every term lands in ``results.csv`` beside the detection losses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from detkd.errors import DetkdError
from detkd.losses.composite import KDComposite, KDInputs
from detkd.losses.masks import gt_box_masks, split_levels
from detkd.students import ultralytics_yolo as uy
from detkd.teachers.ultralytics_yolo import UltralyticsTeacher
from detkd.types import TeacherOutputs

KD_ITEM_NAMES = ("kd/feat", "kd/cls", "kd/box")


class NonFiniteLossError(DetkdError):
    """A loss term became NaN or Inf; training stops instead of learning from it."""


class KDCriterion:
    """Detection loss (Ultralytics' own, with its assigner) plus weighted KD terms.

    Args:
        student: the Ultralytics student model (its hyperparameters ``model.args`` set by the trainer).
        teacher: the frozen teacher.
        composite: the KD objective (holds the adapters).
    """

    def __init__(self, student: Any, teacher: UltralyticsTeacher, composite: KDComposite) -> None:
        self.det = uy.AssignedDetectionLoss(student)
        self.head = uy.detect_head(student)
        self.teacher = teacher
        self.composite = composite
        self.last_unweighted: dict[str, Tensor] = {}

    def update(self) -> None:
        """Called by Ultralytics once per epoch (end-to-end loss schedule)."""
        self.det.update()

    def _feature_masks(
        self, batch: dict[str, Any], teacher: TeacherOutputs, feats: list[Tensor]
    ) -> list[Tensor] | None:
        mode = self.composite.cfg.feature.mask
        grids = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
        if mode == "none":
            return None
        if mode == "teacher":
            conf = teacher.heads["one2many"].cls_logits.detach().float().sigmoid().amax(dim=1)  # (B, A)
            return split_levels(conf, grids)
        img = batch["img"]
        h, w = img.shape[-2:]
        xywh = batch["bboxes"].to(img.device).float() * torch.tensor([w, h, w, h], device=img.device)
        xyxy = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), dim=1)
        strides = [s.stride for s in teacher.specs]
        return gt_box_masks(xyxy, batch["batch_idx"].to(img.device), img.shape[0], grids, strides)

    def _box_masks(self, teacher: TeacherOutputs, fg_masks: dict[str, Tensor]) -> dict[str, Tensor]:
        cfg = self.composite.cfg.box
        if cfg.positions == "assigner":
            return fg_masks
        out = {}
        for name in fg_masks:
            t = teacher.heads.get(name, teacher.heads["one2many"])
            out[name] = t.cls_logits.detach().float().sigmoid().amax(dim=1) >= cfg.teacher_conf
        return out

    def __call__(self, preds: Any, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        branches = uy.split_branches(preds)
        det = self.det(branches, batch)
        teacher_out = self.teacher(batch["img"])
        feats = uy.neck_features(preds)
        kd_inputs = KDInputs(
            student_features=feats,
            student_heads={name: uy.head_outputs(raw, self.head) for name, raw in branches.items()},
            teacher=teacher_out,
            feature_masks=self._feature_masks(batch, teacher_out, feats) if self.composite.use_feature else None,
            box_masks=self._box_masks(teacher_out, det.fg_masks) if self.composite.use_box else {},
        )
        try:
            terms = self.composite(kd_inputs)
        except ValueError as e:
            if "NaN or Inf" in str(e):
                raise NonFiniteLossError(f"KD stopped on non-finite values: {e}") from e
            raise
        scale = det.loss.new_tensor([1.0, self.composite.det_cls_scale, 1.0])
        det_loss = det.loss * scale
        kd = torch.stack([terms.weighted.get(k, terms.total.new_zeros(())) for k in KD_ITEM_NAMES])
        total = torch.cat((det_loss, kd))
        if not bool(torch.isfinite(total).all()):
            names = (*det.items, *KD_ITEM_NAMES)
            bad = [n for n, v in zip(names, total.detach().cpu()) if not torch.isfinite(v)]
            raise NonFiniteLossError(f"non-finite loss term(s) {bad}; stopping instead of training on NaN/Inf")
        self.last_unweighted = {k: v.detach() for k, v in terms.unweighted.items()}
        # Detection items exactly as Ultralytics reports them (comparable with a run without KD); KD items weighted.
        items = dict(det.items)
        items.update({k: v.detach() for k, v in zip(KD_ITEM_NAMES, kd.detach())})
        return total * batch["img"].shape[0], items
