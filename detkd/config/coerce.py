"""Plain data (YAML, ``--set``) to the recipe's dataclasses: types coerced, unknown keys named with the closest
valid one."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from typing import Any

from detkd.config.schema import KDConfig, MethodFamily
from detkd.errors import ConfigError
from detkd.methods import methods


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(section: str, name: str, value: Any, kind: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union) and type(None) in args:  # Optional[X]
        inner = next(a for a in args if a is not type(None))
        return None if value is None else _coerce(section, name, value, inner)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{section}.{name}: expected a list, got {value!r}")
        return tuple(_coerce(section, name, v, args[0]) for v in value)
    if kind is float:
        if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{section}.{name}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{section}.{name}: {value!r} must be a finite number")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{section}.{name}: expected an integer, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{section}.{name}: expected a string, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{section}.{name}: expected true or false, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {kind!r}")  # a detkd bug, not user input


def _build(cls: type, data: Any, section: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "method_options"]
    kwargs: dict[str, Any] = {}
    option_classes = {}
    if issubclass(cls, MethodFamily):  # each registered method's options sit under its name
        option_classes = {m.name: m.options for m in methods(cls.FAMILY) if m.options is not None}
        names += list(option_classes)
        kwargs["method_options"] = {}
    for key, value in data.items():
        if key in option_classes:
            kwargs["method_options"][key] = _build(option_classes[key], value, f"{section}.{key}")
            continue
        if key not in names:
            raise ConfigError(
                f"{section}: unknown key '{key}'{_suggest(str(key), names)}; valid keys: {', '.join(names)}"
            )
        kind = hints[key]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, f"{section}.{key}")
        else:
            kwargs[key] = _coerce(section, key, value, kind)
    try:
        return cls(**kwargs)
    except ConfigError as e:  # nested sections (e.g. schedule) name themselves without their parent
        if str(e).startswith("kd."):
            raise
        raise ConfigError(f"{section.rsplit('.', 1)[0]}.{e}") from e


def kd_config_from_dict(data: dict[str, Any]) -> KDConfig:
    """Build a config from a mapping; a top-level ``kd:`` key is optional."""
    if set(data) == {"kd"}:
        data = data["kd"] or {}
    return typing.cast(KDConfig, _build(KDConfig, data, "kd"))
