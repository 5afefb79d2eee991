"""Teachers: one module per family, each frozen and returning ``TeacherOutputs``.

A registry maps family names to loaders; unknown names are an error listing the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from detkd.errors import ConfigError


def _ultralytics(spec: str | Path, **kw: Any) -> Any:
    from detkd.teachers.ultralytics_yolo import load_ultralytics_teacher

    return load_ultralytics_teacher(spec, **kw)


TEACHER_FAMILIES: dict[str, Callable[..., Any]] = {"ultralytics": _ultralytics}


def build_teacher(spec: str | Path, family: str = "ultralytics", **kw: Any) -> Any:
    """Load a teacher of the given family (``ultralytics`` today)."""
    if family not in TEACHER_FAMILIES:
        raise ConfigError(f"unknown teacher family '{family}'; valid: {', '.join(TEACHER_FAMILIES)}")
    return TEACHER_FAMILIES[family](spec, **kw)
