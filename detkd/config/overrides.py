"""``--set section.key=value`` overrides (values parsed as YAML scalars) merged into a recipe's plain data."""

from __future__ import annotations

from typing import Any

import yaml

from detkd.errors import ConfigError


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
