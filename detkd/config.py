"""KD configuration: frozen dataclasses loaded from YAML, with ``--set section.key=value`` overrides.

Unknown keys, wrong types and out-of-range values are errors that name the key and suggest the closest valid one.

>>> cfg = load_kd_config(None, ["kd.logit.weight=2", "feature.mask=teacher"])
>>> cfg.logit.weight, cfg.feature.mask
(2.0, 'teacher')
>>> load_kd_config(None, ["kd.logit.wieght=2"])
Traceback (most recent call last):
...
detkd.errors.ConfigError: kd.logit: unknown key 'wieght' (did you mean 'weight'?); ...
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detkd.errors import ConfigError, InputFileError

FEATURE_MASKS = ("none", "gt", "teacher")
BOX_POSITIONS = ("assigner", "teacher")


def _check_range(section: str, name: str, value: float, lo: float, hi: float | None = None) -> None:
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{section}.{name}: {value} must be {bound}")


def _check_choice(section: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{name}: '{value}' is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class FeatureKDConfig:
    """Feature-pyramid imitation on the neck maps (P3-P5) through learned 1x1 adapters.

    Attributes:
        weight: multiplier of the feature term; 0 disables it.
        mask: where to imitate: ``gt`` (cells inside ground-truth boxes), ``teacher`` (weighted by the teacher's
            max class probability per cell) or ``none`` (everywhere).
    """

    weight: float = 1.0
    mask: str = "gt"

    def __post_init__(self) -> None:
        _check_range("kd.feature", "weight", self.weight, 0.0)
        _check_choice("kd.feature", "mask", self.mask, FEATURE_MASKS)


@dataclass(frozen=True)
class LogitKDConfig:
    """Sigmoid-aware logit KD on the class head: ``L_cls = a * L_det_cls + (1 - a) * T^2 * L_KD``.

    Attributes:
        weight: extra multiplier of the KD part; 0 disables logit KD (and ``alpha`` is then ignored).
        alpha: share of the detector's own class loss, in [0, 1].
        temperature: softening temperature T > 0 applied to both student and teacher logits.
    """

    weight: float = 1.0
    alpha: float = 0.3
    temperature: float = 1.0

    def __post_init__(self) -> None:
        _check_range("kd.logit", "weight", self.weight, 0.0)
        _check_range("kd.logit", "alpha", self.alpha, 0.0, 1.0)
        if self.temperature <= 0:
            raise ConfigError(f"kd.logit.temperature: {self.temperature} must be > 0")


@dataclass(frozen=True)
class BoxKDConfig:
    """Box-regression distillation: LD (KL on DFL distributions) or IoU + L1 to the teacher's decoded boxes.

    Attributes:
        weight: multiplier of the box term; 0 disables it.
        temperature: LD softening temperature (used when both heads have the same number of DFL bins).
        positions: ``assigner`` (the student's task-aligned assigner foreground) or ``teacher`` (anchors where the
            teacher's max class probability is at least ``teacher_conf``).
        teacher_conf: confidence threshold for ``positions: teacher``.
        l1_weight: weight of the L1 term beside 1 - IoU when LD does not apply.
    """

    weight: float = 1.0
    temperature: float = 2.0
    positions: str = "assigner"
    teacher_conf: float = 0.3
    l1_weight: float = 0.5

    def __post_init__(self) -> None:
        _check_range("kd.box", "weight", self.weight, 0.0)
        if self.temperature <= 0:
            raise ConfigError(f"kd.box.temperature: {self.temperature} must be > 0")
        _check_choice("kd.box", "positions", self.positions, BOX_POSITIONS)
        _check_range("kd.box", "teacher_conf", self.teacher_conf, 0.0, 1.0)
        _check_range("kd.box", "l1_weight", self.l1_weight, 0.0)


@dataclass(frozen=True)
class KDConfig:
    """The whole KD recipe: one section per knowledge family."""

    feature: FeatureKDConfig = field(default_factory=FeatureKDConfig)
    logit: LogitKDConfig = field(default_factory=LogitKDConfig)
    box: BoxKDConfig = field(default_factory=BoxKDConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line per family, for logs and reports."""
        f, lg, b = self.feature, self.logit, self.box
        return "; ".join(
            [
                f"feature: weight={f.weight} mask={f.mask}" if f.weight else "feature: off",
                f"logit: weight={lg.weight} alpha={lg.alpha} T={lg.temperature}" if lg.weight else "logit: off",
                f"box: weight={b.weight} T={b.temperature} positions={b.positions}" if b.weight else "box: off",
            ]
        )


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(section: str, name: str, value: Any, kind: Any) -> Any:
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{section}.{name}: expected a number, got {value!r}")
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
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(
                f"{section}: unknown key '{key}'{_suggest(str(key), names)}; valid keys: {', '.join(names)}"
            )
        kind = hints[key]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, f"{section}.{key}")
        else:
            kwargs[key] = _coerce(section, key, value, kind)
    return cls(**kwargs)


def kd_config_from_dict(data: dict[str, Any]) -> KDConfig:
    """Build a config from a mapping; a top-level ``kd:`` key is optional."""
    if set(data) == {"kd"}:
        data = data["kd"] or {}
    return typing.cast(KDConfig, _build(KDConfig, data, "kd"))


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. kd.logit.weight=2")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if parts and parts[0] == "kd":
        parts = parts[1:]
    if len(parts) < 2:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. kd.logit.weight=2")
    return parts, yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Merge ``section.key=value`` strings (values parsed as YAML scalars) into a nested mapping (copied)."""
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        parts, value = _parse_override(item)
        node = merged
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: kd.{p} is not a section")
            node[p] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return merged


def load_kd_config(path: str | Path | None = None, overrides: list[str] | None = None) -> KDConfig:
    """Load a KD config from a YAML file (or the defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise InputFileError(p, "KD config file not found")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise InputFileError(p, f"not valid YAML ({e})") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputFileError(p, "a KD config must be a mapping of sections (feature, logit, box)")
        data = loaded.get("kd", loaded) if set(loaded) == {"kd"} else loaded
        data = data or {}
    try:
        return kd_config_from_dict(apply_overrides(data, overrides or []))
    except ConfigError as e:
        if path is not None:
            raise ConfigError(f"{path}: {e}") from e
        raise


def dump_kd_config(cfg: KDConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump({"kd": cfg.to_dict()}, sort_keys=False), encoding="utf-8")
