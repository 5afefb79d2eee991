"""Teachers: one module per family, each frozen and returning ``TeacherOutputs``.

A registry maps family names to loaders; unknown names are an error listing the valid ones. ``auto`` picks the
family from the spec: ``torchvision:<builder>[:<weights.pth>]`` is a torchvision detector, a ``.pt`` that references
the YOLOv5 repository's classes is a classic YOLOv5 checkpoint, anything else an Ultralytics model (``.pt`` or
YAML).
"""

from detkd.teachers.registry import (
    ALLOW_RANDOM_ENV,
    TEACHER_SUFFIXES,
    build_teacher,
    detect_family,
    load_eval_model,
    random_teacher_allowed,
    refuse_untrained,
    untrained,
)

__all__ = [
    "ALLOW_RANDOM_ENV",
    "TEACHER_SUFFIXES",
    "build_teacher",
    "detect_family",
    "load_eval_model",
    "random_teacher_allowed",
    "refuse_untrained",
    "untrained",
]
