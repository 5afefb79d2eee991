"""Recipe files: a KD config read from YAML or a shipped preset (``preset:NAME``), overrides applied, and written
back (``kd.yaml`` of a run)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml

from detkd._io import read_yaml
from detkd.config.coerce import kd_config_from_dict
from detkd.config.overrides import apply_overrides
from detkd.config.schema import KDConfig
from detkd.errors import ConfigError, InputFileError

PRESET_PREFIX = "preset:"


def presets() -> dict[str, Path]:
    """The named recipes shipped with detkd (``--kd preset:NAME``): name -> YAML file."""
    folder = Path(__file__).resolve().parents[1] / "presets"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def preset_path(spec: str) -> Path:
    """The YAML of ``preset:NAME``; a one-line error naming the presets when there is no such one."""
    name = spec[len(PRESET_PREFIX) :]
    known = presets()
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"--kd {spec}: no such preset{hint}; presets: {', '.join(known)}")
    return known[name]


def load_kd_config(path: str | Path | None = None, overrides: list[str] | None = None) -> KDConfig:
    """Load a KD config from a YAML file, a shipped preset (``preset:NAME``, see :func:`presets`) or the defaults
    (``path`` None), and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = preset_path(str(path)) if str(path).startswith(PRESET_PREFIX) else Path(path)
        loaded = read_yaml(p, "KD config")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputFileError(p, "a KD config must be a mapping of sections (feature, logit, box, balance)")
        data = loaded.get("kd", loaded) if set(loaded) == {"kd"} else loaded
        data = data or {}
    try:
        return kd_config_from_dict(apply_overrides(data, overrides or []))
    except ConfigError as e:
        if path is not None:
            raise ConfigError(f"{path}: {e}") from e
        raise


def resolve_kd_config(
    kd: KDConfig | dict[str, Any] | str | Path | None, overrides: list[str] | None = None
) -> KDConfig:
    """A recipe given any way the API takes one (a config, plain data, a YAML path or preset, None for the defaults),
    with ``overrides`` applied."""
    if isinstance(kd, KDConfig):
        return kd_config_from_dict(apply_overrides(kd.to_dict(), overrides or []))
    if isinstance(kd, dict):
        return kd_config_from_dict(apply_overrides(kd, overrides or []))
    return load_kd_config(kd, overrides)


def dump_kd_config(cfg: KDConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump({"kd": cfg.to_dict()}, sort_keys=False), encoding="utf-8")
