"""The implementations behind detkd's registered methods (:mod:`detkd.config.builtin_methods` declares them).

Feature methods are :class:`FeatureMethod` modules (built once per student/teacher pair, holding any learned parts:
MGD's generators, FGD's relation blocks); logit and box methods are functions of one head branch. The composite
(:mod:`detkd.losses.composite`) finds them through the registry, so nothing here is named anywhere else.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from detkd.losses.box import bounded_l2_loss, box_iou_l1_loss, ld_loss
from detkd.losses.feature import channel_wise_kd, masked_mse, pearson_kd
from detkd.losses.fgd import GlobalRelation, fgd_loss
from detkd.losses.logit import sigmoid_kd, softmax_kd
from detkd.losses.mgd import MGDGenerator, mgd_loss, random_keep_mask
from detkd.losses.relation import relation_kd, teacher_instances
from detkd.types import HeadOutputs


class FeatureMethod(nn.Module):
    """Base of a feature method: built once per pair; :meth:`forward` gets the whole pyramid.

    Args:
        cfg: the ``kd.feature`` section.
        options: the method's options (None when it has none).
        teacher_specs: per student level, the paired teacher level's :class:`detkd.types.FeatureSpec`.
        student_specs: the student's levels.

    Subclasses implement :meth:`level` (one term per level; the term is their mean and each is logged as
    ``kd/feat/<level>``) or override :meth:`forward` for a loss across levels.
    """

    def __init__(self, cfg: Any, options: Any, teacher_specs: Sequence[Any], student_specs: Sequence[Any]) -> None:
        super().__init__()
        self.cfg, self.options = cfg, options
        self.teacher_specs, self.student_specs = list(teacher_specs), list(student_specs)

    def level(self, i: int, student: Tensor, teacher: Tensor, mask: Tensor | None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} implements neither level() nor forward()")

    def forward(
        self,
        students: Sequence[Tensor],
        teachers: Sequence[Tensor],
        masks: Sequence[Tensor | None],
        names: Sequence[str],
        inputs: Any,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The term and its named parts. ``students``: the (adapted) student maps; ``teachers``: the paired teacher
        maps on the student's grids; ``inputs``: the step's :class:`detkd.losses.composite.KDInputs`."""
        parts = {
            n: self.level(i, s, t, m)
            for i, (s, t, m, n) in enumerate(zip(students, teachers, masks, names, strict=True))
        }
        return torch.stack(list(parts.values())).mean(), parts


# ---- feature -----------------------------------------------------------------------------------------------------


class MSEImitation(FeatureMethod):
    """``mse`` and ``fine_grained`` (the same loss; they differ in their positions)."""

    def level(self, i: int, student: Tensor, teacher: Tensor, mask: Tensor | None) -> Tensor:
        return masked_mse(student, teacher, mask=mask)


class Pearson(FeatureMethod):
    def level(self, i: int, student: Tensor, teacher: Tensor, mask: Tensor | None) -> Tensor:
        return pearson_kd(student, teacher, mask=mask)


class ChannelWise(FeatureMethod):
    def level(self, i: int, student: Tensor, teacher: Tensor, mask: Tensor | None) -> Tensor:
        return channel_wise_kd(student, teacher, temperature=self.options.temperature)


class MGD(FeatureMethod):
    def __init__(self, cfg: Any, options: Any, teacher_specs: Sequence[Any], student_specs: Sequence[Any]) -> None:
        super().__init__(cfg, options, teacher_specs, student_specs)
        self.generators = nn.ModuleList(MGDGenerator(t.channels) for t in self.teacher_specs)

    def level(self, i: int, student: Tensor, teacher: Tensor, mask: Tensor | None) -> Tensor:
        keep = random_keep_mask(student, self.options.mask_ratio)
        return mgd_loss(student, teacher, generator=self.generators[i], keep=keep)


class FGD(FeatureMethod):
    def __init__(self, cfg: Any, options: Any, teacher_specs: Sequence[Any], student_specs: Sequence[Any]) -> None:
        super().__init__(cfg, options, teacher_specs, student_specs)
        self.relations = nn.ModuleList(
            GlobalRelation(t.channels) for t in self.teacher_specs if options.lambda_global > 0
        )

    def level(self, i: int, student: Tensor, teacher: Tensor, mask: Tensor | None) -> Tensor:
        if mask is None or mask.shape[1] != 2:
            raise ValueError("fgd needs (B, 2, H, W) foreground/background weights per level")
        o = self.options
        return fgd_loss(
            student,
            teacher,
            fg_weight=mask[:, 0],
            bg_weight=mask[:, 1],
            temperature=o.temperature,
            alpha_fg=o.alpha_fg,
            beta_bg=o.beta_bg,
            gamma_attention=o.gamma_attention,
            lambda_global=o.lambda_global,
            relation=self.relations[i] if len(self.relations) else None,
        )


class Relation(FeatureMethod):
    """``relation``: instance relations per level and the relation between levels (:func:`relation_kd`)."""

    def forward(
        self,
        students: Sequence[Tensor],
        teachers: Sequence[Tensor],
        masks: Sequence[Tensor | None],
        names: Sequence[str],
        inputs: Any,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        o = self.options
        boxes, image_index = _instances(inputs, o)
        strides = [float(s.stride) for s in self.student_specs]
        return relation_kd(
            list(students),
            list(teachers),
            boxes,
            image_index,
            strides,
            names=list(names),
            distance=o.distance,
            level_weight=o.level_weight,
            max_instances=o.max_instances,
            pool=o.pool,
        )


def _instances(inputs: Any, o: Any) -> tuple[Tensor, Tensor]:
    """The boxes relations are drawn between: the batch's ground truth, or the teacher's confident detections."""
    if o.boxes == "gt":
        if inputs.instances is None:
            raise ValueError("relation KD with boxes=gt needs the batch's ground-truth boxes")
        return typing.cast(tuple[Tensor, Tensor], inputs.instances)
    head = inputs.teacher.heads.get("one2many") or next(iter(inputs.teacher.heads.values()))
    return teacher_instances(head, conf=o.teacher_conf, max_instances=o.max_instances)


# ---- logit -------------------------------------------------------------------------------------------------------


def bce_kd(sh: HeadOutputs, th: HeadOutputs, *, mask: Tensor | None, cfg: Any, options: Any) -> Tensor:
    normalizer = None
    if mask is None:  # normalise like YOLO's class loss (by total target mass): the teacher's confidence mass
        normalizer = th.cls_logits.detach().float().sigmoid().amax(dim=1).sum()
    return sigmoid_kd(
        sh.cls_logits,
        th.cls_logits,
        temperature=cfg.temperature,
        mask=mask,
        normalizer=normalizer,
        normalizer_floor=1.0,
        weighting=options.weighting,
        gamma=options.gamma,
        class_weights=th.class_mask,
    )


def kl_kd(sh: HeadOutputs, th: HeadOutputs, *, mask: Tensor | None, cfg: Any, options: Any) -> Tensor:
    s_cls, t_cls = sh.cls_logits, th.cls_logits
    if th.class_mask is not None:  # the softmax runs over the classes that have a teacher
        keep = th.class_mask.bool()
        s_cls, t_cls = s_cls[:, keep], t_cls[:, keep]
    return softmax_kd(s_cls, t_cls, temperature=cfg.temperature, mask=mask)


# ---- box ---------------------------------------------------------------------------------------------------------


def ld_kd(
    sh: HeadOutputs, th: HeadOutputs, *, mask: Tensor | None, target: Tensor | None, cfg: Any, options: Any
) -> Tensor:
    return ld_loss(sh.box_raw, th.box_raw, reg_max=sh.reg_max, temperature=options.temperature, mask=mask)


def iou_kd(
    sh: HeadOutputs, th: HeadOutputs, *, mask: Tensor | None, target: Tensor | None, cfg: Any, options: Any
) -> Tensor:
    return box_iou_l1_loss(
        sh.boxes_xyxy(),
        th.boxes_xyxy(),
        mask=mask,
        scale=sh.stride_tensor.view(-1),
        l1_weight=options.l1_weight,
        kind=options.kind,
    )


def bounded_l2_kd(
    sh: HeadOutputs, th: HeadOutputs, *, mask: Tensor | None, target: Tensor | None, cfg: Any, options: Any
) -> Tensor:
    if target is None:
        raise ValueError("bounded_l2 box KD needs ground-truth targets")
    return bounded_l2_loss(sh.distances(), th.distances(), target, margin=options.margin, mask=mask)
