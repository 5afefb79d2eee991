"""Data YAML loading before any training starts.

detkd reads the same data YAML as Ultralytics (``path``, ``train``, ``val``, ``names``/``nc``), checks it up front
and reports a problem as one line naming the file: a missing key, a path that points nowhere, names that do not
match ``nc``. Relative paths resolve against the ``path`` key, then the working directory, then the YAML's own
folder; Ultralytics then receives a copy of the YAML with absolute paths, so both agree. The per-sample checks
(images that do not decode, malformed label rows) live in :mod:`detkd.data.checks`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from detkd.errors import InputFileError

if TYPE_CHECKING:
    from detkd.data.checks import SplitReport

LOGGER = logging.getLogger(__name__)

Row = tuple[int, float, float, float, float]  # class, cx, cy, w, h (normalised)


@dataclass
class DataSpec:
    """A validated data YAML.

    Attributes:
        yaml_path: the file it came from.
        root: the dataset root (absolute).
        splits: split name -> list of image folders or list files (absolute).
        names: class index -> name.
        extra: other keys of the YAML, kept for Ultralytics (e.g. ``channels``).
        reports: split -> what the sample check found (see :mod:`detkd.data.checks`), once checked.
    """

    yaml_path: Path
    root: Path
    splits: dict[str, list[Path]]
    names: dict[int, str]
    extra: dict[str, Any] = field(default_factory=dict)
    reports: dict[str, SplitReport] = field(default_factory=dict)

    @property
    def validated(self) -> bool:
        return {"train", "val"} <= set(self.reports)

    @property
    def nc(self) -> int:
        return len(self.names)

    def split_paths(self, split: str) -> list[Path]:
        if split not in self.splits:
            raise InputFileError(self.yaml_path, f"has no '{split}' split (splits: {', '.join(self.splits)})")
        return self.splits[split]

    def to_ultralytics(self) -> dict[str, Any]:
        """A data dict with absolute paths, for writing a resolved YAML that Ultralytics reads."""
        data: dict[str, Any] = {"path": str(self.root)}
        for k, v in self.splits.items():
            data[k] = [str(p) for p in v] if len(v) > 1 else str(v[0])
        data["nc"] = self.nc
        data["names"] = dict(self.names)
        data.update({k: v for k, v in self.extra.items() if k not in data and k != "download"})
        return data

    def write_resolved(self, path: str | Path) -> Path:
        """Write the YAML Ultralytics trains on; a split with skipped or repaired samples becomes an image list
        of the usable ones in ``<path folder>/data/`` (with ``report.json`` saying what was left out and why)."""
        from detkd.data.checks import write_split_list

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_ultralytics()
        folder = path.parent / "data"
        for split, report in self.reports.items():
            if report.changed:
                data[split] = str(write_split_list(report, folder))
        if self.reports:
            folder.mkdir(exist_ok=True)
            summary = {split: r.to_dict() for split, r in self.reports.items()}
            (folder / "report.json").write_text(json.dumps({"source": str(self.yaml_path), **summary}, indent=2))
        header = f"# resolved by detkd from {self.yaml_path}\n"
        path.write_text(header + yaml.safe_dump(data, sort_keys=False))
        return path


def _resolve(base_candidates: list[Path], rel: str) -> Path | None:
    p = Path(rel).expanduser()
    if p.is_absolute():
        return p if p.exists() else None
    for base in base_candidates:
        q = (base / p).resolve()
        if q.exists():
            return q
    return None


def _names(data: dict[str, Any], yaml_path: Path) -> dict[int, str]:
    names = data.get("names")
    nc = data.get("nc")
    if names is None and nc is None:
        raise InputFileError(yaml_path, "needs 'names' (or at least 'nc')")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
        raise InputFileError(yaml_path, f"'nc: {nc}' must be a positive integer")
    if names is None:
        return {i: f"class_{i}" for i in range(int(nc))}  # type: ignore[arg-type]
    if isinstance(names, list):
        out = dict(enumerate(names))
    elif isinstance(names, dict):
        try:
            out = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError) as e:
            raise InputFileError(yaml_path, f"'names' keys must be class indices 0..n-1 ({e})") from e
    else:
        raise InputFileError(yaml_path, f"'names' must be a list or a mapping, not {type(names).__name__}")
    if sorted(out) != list(range(len(out))):
        raise InputFileError(yaml_path, f"'names' keys must be 0..{len(out) - 1}, got {sorted(out)}")
    if nc is not None and nc != len(out):
        raise InputFileError(yaml_path, f"'nc: {nc}' does not match the {len(out)} entries of 'names'")
    return {k: str(v) for k, v in sorted(out.items())}


def load_data_spec(path: str | Path) -> DataSpec:
    """Read and check a data YAML: keys present, paths that exist, consistent class names.

    Raises:
        InputFileError: naming the YAML and the problem.
    """
    yaml_path = Path(path)
    if not yaml_path.is_file():
        raise InputFileError(yaml_path, "data YAML not found")
    try:
        data = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputFileError(yaml_path, f"not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise InputFileError(yaml_path, "a data YAML must be a mapping with 'train', 'val' and 'names'")
    yaml_dir = yaml_path.resolve().parent
    if data.get("path"):
        root = _resolve([Path.cwd(), yaml_dir], str(data["path"]))
        if root is None:
            raise InputFileError(yaml_path, f"dataset root 'path: {data['path']}' does not exist")
    else:
        root = yaml_dir
    splits: dict[str, list[Path]] = {}
    for key in ("train", "val", "test"):
        value = data.get(key)
        if value is None:
            if key in ("train", "val"):
                raise InputFileError(yaml_path, f"key '{key}' is missing")
            continue
        resolved = []
        for rel in value if isinstance(value, list) else [value]:
            p = _resolve([root, Path.cwd(), yaml_dir], str(rel))
            if p is None:
                raise InputFileError(yaml_path, f"'{key}: {rel}' points nowhere (looked under {root})")
            resolved.append(p)
        splits[key] = resolved
    extra = {k: v for k, v in data.items() if k not in {"path", "train", "val", "test", "names", "nc"}}
    return DataSpec(yaml_path=yaml_path, root=root, splits=splits, names=_names(data, yaml_path), extra=extra)


def _split_files(src: Path) -> list[Path]:
    """The files of one split source: everything under a folder (sorted), or the entries of an image list file."""
    if src.is_dir():
        return sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
    files = []
    for line in src.read_text().splitlines():  # a text file listing images, relative to its folder
        line = line.strip()
        if line:
            p = Path(line)
            files.append(p if p.is_absolute() else (src.parent / p).resolve())
    return files


def iter_split_sources(spec: DataSpec, split: str) -> Iterator[tuple[Path, list[Path]]]:
    """(source, files) for each folder or list file of a split."""
    for src in spec.split_paths(split):
        yield src, _split_files(src)


def list_images(spec: DataSpec, split: str) -> list[Path]:
    """All images of a split (folder files with an image suffix, list entries as listed); raises when there are none."""
    from detkd.data.checks import image_formats, source_images

    formats = image_formats()
    images = [p for src, files in iter_split_sources(spec, split) for p in source_images(src, files, formats)]
    if not images:
        raise InputFileError(spec.yaml_path, f"split '{split}' has no images")
    return images


def label_path_for(image: Path) -> Path:
    """Ultralytics convention: the last ``/images/`` folder becomes ``/labels/`` and the suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")
