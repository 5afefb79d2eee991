"""The teacher registry: family names to loaders, the family of a spec, and the untrained-teacher guard."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detkd.errors import ConfigError, InputFileError
from detkd.types import Teacher


def _ultralytics(spec: str | Path, **kw: Any) -> Teacher:
    from detkd.teachers.ultralytics_yolo import load_ultralytics_teacher

    return load_ultralytics_teacher(spec, **kw)


def _yolov5_legacy(spec: str | Path, **kw: Any) -> Teacher:
    from detkd.teachers.yolov5_legacy import load_legacy_teacher

    return load_legacy_teacher(spec, **kw)


def _torchvision(spec: str | Path, **kw: Any) -> Teacher:
    from detkd.teachers.torchvision_det import load_torchvision_teacher

    return load_torchvision_teacher(spec, **kw)


def _rtdetr(spec: str | Path, **kw: Any) -> Teacher:
    from detkd.teachers.rtdetr import load_rtdetr_teacher

    return load_rtdetr_teacher(spec, **kw)


def _ensemble(spec: str | Path, **kw: Any) -> Teacher:
    from detkd.teachers.ensemble import load_ensemble_teacher

    return load_ensemble_teacher(spec, build=build_teacher, **kw)  # members are built through this registry


TEACHER_FAMILIES: dict[str, Callable[..., Teacher]] = {
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


ALLOW_RANDOM_ENV = "DETKD_ALLOW_RANDOM_TEACHER"  # "1": every untrained teacher is allowed (test suites, smoke runs)


def untrained(spec: str | Path) -> str | None:
    """Why ``spec`` would build a randomly initialised teacher, or None when it loads trained weights.

    A model YAML (Ultralytics YOLO or RT-DETR: in Ultralytics a YAML name means "download the weights", in detkd it
    means "build it untrained") and a torchvision builder without a weights file are untrained; an ensemble is
    judged member by member when it is built.

    >>> untrained("torchvision:fcos_resnet50_fpn") is not None, untrained("yolov8s.pt") is None
    (True, True)
    """
    text = str(spec)
    if text.startswith("torchvision:"):
        from detkd.teachers.torchvision_det import parse_spec

        return None if parse_spec(text)[1] is not None else "a torchvision builder without a weights file"
    if Path(text).suffix.lower() in (".yaml", ".yml"):
        from detkd.teachers.ensemble import is_ensemble

        return None if is_ensemble(spec) else "a model YAML (an architecture, no weights)"
    return None


def random_teacher_allowed(allow: bool = False) -> bool:
    """``allow`` (``--allow-random-teacher``), or the environment's ``DETKD_ALLOW_RANDOM_TEACHER=1``."""
    return allow or os.environ.get(ALLOW_RANDOM_ENV, "") == "1"


def refuse_untrained(spec: str | Path, allow: bool = False) -> None:
    """Raise :class:`InputFileError` when ``spec`` is untrained (:func:`untrained`) and that was not allowed; cheap,
    so callers run it before reading any data."""
    reason = untrained(spec)
    if reason is not None and not random_teacher_allowed(allow):
        raise InputFileError(
            spec,
            f"{reason}: the teacher would be a random network; give trained weights (.pt, or "
            "torchvision:<builder>:<weights.pth>), or pass --allow-random-teacher (Python: allow_random_teacher=True) "
            "to distil from it on purpose",
        )


def build_teacher(spec: str | Path, family: str = "auto", *, allow_random: bool = False, **kw: Any) -> Teacher:
    """Load a teacher of the given family (``auto``: decided from the file). An untrained teacher (see
    :func:`untrained`) is refused unless ``allow_random`` (or ``DETKD_ALLOW_RANDOM_TEACHER=1``): distilling from
    a random network by accident costs a whole run and teaches nothing."""
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
    refuse_untrained(spec, allow_random)
    if family == "ensemble":
        kw["allow_random"] = allow_random
    return TEACHER_FAMILIES[family](spec, **kw)


def load_eval_model(path: str | Path) -> Any:
    """A detector for evaluation whose eval-mode output is Ultralytics-style (B, 4 + nc, A) predictions."""
    if detect_family(path) == "yolov5-legacy":
        from detkd.teachers.yolov5_legacy import load_legacy_yolov5

        return load_legacy_yolov5(path)
    from detkd.students import ultralytics_yolo as uy

    return uy.load_detection_model(path)
