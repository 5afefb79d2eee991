"""A teacher seen through a class map: its class scores re-indexed to the student's classes."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detkd.classmap import ClassMap, resolve_class_map
from detkd.teachers.base import FrozenTeacher
from detkd.types import TeacherOutputs

LOGGER = logging.getLogger(__name__)


class ClassMappedTeacher(FrozenTeacher):
    """Wraps any teacher so that its heads speak the student's classes (see :mod:`detkd.classmap`).

    Features are untouched (feature KD does not depend on classes); each head's class logits become the student's
    classes, with ``class_mask`` marking the classes that receive logit KD.
    """

    def __init__(self, teacher: Any, class_map: ClassMap) -> None:
        super().__init__()
        if len(class_map.teacher_names) != teacher.num_classes:
            raise ValueError(
                f"class map has {len(class_map.teacher_names)} teacher classes, teacher has {teacher.num_classes}"
            )
        self.inner = teacher
        self.class_map = class_map
        self.specs = teacher.specs
        self.names = dict(class_map.student_names)
        self.num_classes = len(class_map.student_names)
        self.reg_max = teacher.reg_max
        self.end2end = teacher.end2end
        self.freeze()

    @torch.no_grad()
    def forward(self, images: Tensor) -> TeacherOutputs:
        out = self.inner(images)
        heads = {}
        for name, h in out.heads.items():
            logits = self.class_map.apply(h.cls_logits)
            heads[name] = dataclasses.replace(h, cls_logits=logits, class_mask=self.class_map.class_mask(logits))
        return TeacherOutputs(features=out.features, specs=out.specs, heads=heads)

    def describe(self) -> str:
        return f"{self.inner.describe()}, classes mapped: {self.class_map.describe()}"


def paired_classes(teacher: Any, names: dict[int, str], class_map: str | Path | None, *, required: bool) -> Any:
    """The teacher, seen through a class map when its classes are not ``names``.

    With ``class_map`` that map is applied; without one, a teacher with exactly ``names`` is used as is, one whose
    classes include every name is mapped by name, and any other is refused when ``required`` (logit KD on).
    """
    cmap = resolve_class_map(teacher.names, names, class_map, source="the teacher", required=required,
                             alternative=" or set kd.logit.weight=0")  # fmt: skip
    return teacher if cmap is None else ClassMappedTeacher(teacher, cmap)
