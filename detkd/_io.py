"""Small file helpers shared by the loaders: every error names the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from detkd.errors import InputFileError


def read_yaml(path: str | Path, what: str) -> Any:
    """Parse a YAML file (``yaml.safe_load``); ``what`` names it in errors (e.g. "KD config")."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, f"{what} file not found")
    try:
        return yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise InputFileError(p, f"not valid YAML ({e})") from e
