"""Teachers: one module per family, each frozen and returning ``TeacherOutputs``.

A registry maps family names to loaders; unknown names are an error listing the valid ones. ``auto`` picks the
family from the spec: ``torchvision:<builder>[:<weights.pth>]`` is a torchvision detector, a ``.pt`` that references
the YOLOv5 repository's classes is a classic YOLOv5 checkpoint, anything else an Ultralytics model (``.pt`` or
YAML).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from detkd.errors import ConfigError, InputFileError


def _ultralytics(spec: str | Path, **kw: Any) -> Any:
    from detkd.teachers.ultralytics_yolo import load_ultralytics_teacher

    return load_ultralytics_teacher(spec, **kw)


def _yolov5_legacy(spec: str | Path, **kw: Any) -> Any:
    from detkd.teachers.yolov5_legacy import load_legacy_teacher

    return load_legacy_teacher(spec, **kw)


def _torchvision(spec: str | Path, **kw: Any) -> Any:
    from detkd.teachers.torchvision_det import load_torchvision_teacher

    return load_torchvision_teacher(spec, **kw)


def _rtdetr(spec: str | Path, **kw: Any) -> Any:
    from detkd.teachers.rtdetr import load_rtdetr_teacher

    return load_rtdetr_teacher(spec, **kw)


def _ensemble(spec: str | Path, **kw: Any) -> Any:
    from detkd.teachers.ensemble import load_ensemble_teacher

    return load_ensemble_teacher(spec, **kw)


TEACHER_FAMILIES: dict[str, Callable[..., Any]] = {
    "ensemble": _ensemble,
    "ultralytics": _ultralytics,
    "yolov5-legacy": _yolov5_legacy,
    "torchvision": _torchvision,
    "rtdetr": _rtdetr,
}


def detect_family(spec: str | Path) -> str:
    """The family of a teacher spec: ``ensemble`` (a YAML with an ``ensemble`` key), ``torchvision``
    (``torchvision:<builder>[:<weights>]``), ``rtdetr`` (an
    Ultralytics RT-DETR ``.pt`` or YAML), ``yolov5-legacy`` (a ``.pt`` referencing the YOLOv5 repository's classes)
    or ``ultralytics``."""
    from detkd.teachers.ensemble import is_ensemble
    from detkd.teachers.rtdetr import is_rtdetr
    from detkd.teachers.yolov5_legacy import is_legacy_yolov5

    if str(spec).startswith("torchvision:"):
        return "torchvision"
    if is_ensemble(spec):
        return "ensemble"
    if is_rtdetr(spec):
        return "rtdetr"
    return "yolov5-legacy" if is_legacy_yolov5(spec) else "ultralytics"


TEACHER_SUFFIXES = (".pt", ".yaml", ".yml")


def build_teacher(spec: str | Path, family: str = "auto", **kw: Any) -> Any:
    """Load a teacher of the given family (``auto``: decided from the file)."""
    text = str(spec)
    if not text.startswith("torchvision:") and Path(text).suffix.lower() not in TEACHER_SUFFIXES:
        raise InputFileError(
            text,
            "a teacher is an Ultralytics YOLO/RT-DETR .pt or model YAML, a classic YOLOv5 .pt, an ensemble YAML or "
            "torchvision:<builder>[:<weights>]; an exported model (ONNX, engine, ...) cannot teach",
        )
    if family == "auto":
        family = detect_family(spec)
    if family not in TEACHER_FAMILIES:
        raise ConfigError(f"unknown teacher family '{family}'; valid: auto, {', '.join(TEACHER_FAMILIES)}")
    return TEACHER_FAMILIES[family](spec, **kw)


def load_eval_model(path: str | Path) -> Any:
    """A detector for evaluation whose eval-mode output is Ultralytics-style (B, 4 + nc, A) predictions."""
    if detect_family(path) == "yolov5-legacy":
        from detkd.teachers.yolov5_legacy import load_legacy_yolov5

        return load_legacy_yolov5(path)
    from detkd.students import ultralytics_yolo as uy

    return uy.load_detection_model(path)
