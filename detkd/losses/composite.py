"""The weighted KD objective: applies the config's weights and returns named unweighted and weighted terms.

Losses carry no weights; this is the one place that combines them. For a batch it computes

* ``kd/feat``  = w_f * mean over levels of masked_mse(adapter(student_l), teacher_l, mask_l)
* ``kd/cls``   = w_l * (1 - alpha) * sigmoid_kd(student cls, teacher cls, T)     (T^2 inside sigmoid_kd)
* ``kd/box``   = w_b * (ld_loss or box_iou_l1_loss) on the chosen positions

and tells the trainer to scale the detector's own class loss by ``alpha`` (``det_cls_scale``), so that the class
part of the objective is ``alpha * L_det_cls + (1 - alpha) * T^2 * L_KD``. Box and DFL losses keep their weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from detkd.adapters import FeatureAdapters, level_name
from detkd.config import KDConfig
from detkd.errors import PairingError
from detkd.losses.box import box_iou_l1_loss, ld_loss
from detkd.losses.feature import masked_mse
from detkd.losses.logit import sigmoid_kd
from detkd.types import FeatureSpec, HeadOutputs, TeacherOutputs


@dataclass
class KDInputs:
    """Everything one KD step needs, already aligned on the student's grid.

    Attributes:
        student_features: the student's neck maps (before adapters).
        student_heads: the student's dense head outputs by branch.
        teacher: the teacher's outputs for the same images.
        feature_masks: per level (B, 1, H, W) weights, or None to imitate everywhere.
        box_masks: per branch (B, A) positions for box KD.
    """

    student_features: list[Tensor]
    student_heads: dict[str, HeadOutputs]
    teacher: TeacherOutputs
    feature_masks: list[Tensor] | None = None
    box_masks: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class KDTerms:
    """The KD part of the loss: ``total`` (to add to the detection loss) and its named terms."""

    total: Tensor
    unweighted: dict[str, Tensor]
    weighted: dict[str, Tensor]


def box_kd_mode(student_reg_max: int, teacher_reg_max: int) -> str:
    """``ld`` when both heads have the same DFL bins, else ``iou`` (decoded boxes).

    >>> box_kd_mode(16, 16), box_kd_mode(1, 16), box_kd_mode(16, 1)
    ('ld', 'iou', 'iou')
    """
    return "ld" if student_reg_max > 1 and student_reg_max == teacher_reg_max else "iou"


class KDComposite(nn.Module):
    """Weighted sum of the three KD families for one teacher/student pair.

    Args:
        cfg: the KD recipe.
        student_specs / teacher_specs: paired feature levels (validated here; a mismatch is a ``PairingError``).
        student_classes / teacher_classes: class counts; logit KD needs them equal (a class map comes later).
        student_reg_max / teacher_reg_max: DFL bins of each head, which choose LD or IoU box KD.
    """

    def __init__(
        self,
        cfg: KDConfig,
        *,
        student_specs: list[FeatureSpec],
        teacher_specs: list[FeatureSpec],
        student_classes: int,
        teacher_classes: int,
        student_reg_max: int,
        teacher_reg_max: int,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.adapters = FeatureAdapters(student_specs, teacher_specs)  # validates pairing even when feature KD is off
        self.level_names = [level_name(s) for s in student_specs]
        self.use_feature = cfg.feature.weight > 0
        self.use_logit = cfg.logit.weight > 0
        self.use_box = cfg.box.weight > 0
        if self.use_logit and student_classes != teacher_classes:
            raise PairingError(
                f"logit KD needs the same classes: student has {student_classes}, teacher has {teacher_classes}; "
                "set kd.logit.weight=0 (feature and box KD still work) until class maps land"
            )
        self.box_mode = box_kd_mode(student_reg_max, teacher_reg_max)

    @property
    def det_cls_scale(self) -> float:
        """Factor for the detector's own class loss: ``alpha`` when logit KD is on, else 1."""
        return self.cfg.logit.alpha if self.use_logit else 1.0

    def forward(self, inp: KDInputs) -> KDTerms:
        unweighted: dict[str, Tensor] = {}
        weighted: dict[str, Tensor] = {}
        ref = inp.student_features[0]
        zero = ref.new_zeros(()).float()

        if self.use_feature:
            adapted = self.adapters(inp.student_features)
            level_losses = []
            for i, (s, t) in enumerate(zip(adapted, inp.teacher.features)):
                if s.shape != t.shape:
                    raise PairingError(
                        f"level {self.level_names[i]}: student map {tuple(s.shape)} vs teacher map {tuple(t.shape)}"
                    )
                mask = inp.feature_masks[i] if inp.feature_masks is not None else None
                loss = masked_mse(s, t, mask=mask)
                unweighted[f"kd/feat/{self.level_names[i]}"] = loss
                level_losses.append(loss)
            feat = torch.stack(level_losses).mean()
            unweighted["kd/feat"] = feat
            weighted["kd/feat"] = self.cfg.feature.weight * feat

        branches: list[tuple[str, HeadOutputs, HeadOutputs]] = [
            (name, s, inp.teacher.heads[name]) for name, s in inp.student_heads.items() if name in inp.teacher.heads
        ]
        if self.use_logit and branches:
            t_kd = self.cfg.logit.temperature
            cls_losses = []
            for _, sh, th in branches:
                # Normalise like YOLO's class loss (by total target mass): the teacher's confidence mass.
                mass = th.cls_logits.detach().float().sigmoid().amax(dim=1).sum().clamp(min=1.0)
                cls_losses.append(sigmoid_kd(sh.cls_logits, th.cls_logits, temperature=t_kd, normalizer=mass))
            cls = torch.stack(cls_losses).mean()
            unweighted["kd/cls"] = cls
            weighted["kd/cls"] = self.cfg.logit.weight * (1.0 - self.cfg.logit.alpha) * cls

        if self.use_box and branches:
            box_losses = []
            for name, sh, th in branches:
                mask = inp.box_masks.get(name)
                if mask is None:
                    raise ValueError(f"box KD needs positions for branch '{name}'")
                if self.box_mode == "ld":
                    loss = ld_loss(
                        sh.box_raw, th.box_raw, reg_max=sh.reg_max, temperature=self.cfg.box.temperature, mask=mask
                    )
                else:
                    loss = box_iou_l1_loss(
                        sh.boxes_xyxy(),
                        th.boxes_xyxy(),
                        mask=mask,
                        scale=sh.stride_tensor.view(-1),
                        l1_weight=self.cfg.box.l1_weight,
                    )
                box_losses.append(loss)
            box = torch.stack(box_losses).mean()
            unweighted["kd/box"] = box
            weighted["kd/box"] = self.cfg.box.weight * box

        total = sum(weighted.values(), zero)
        return KDTerms(total=total, unweighted=unweighted, weighted=weighted)
