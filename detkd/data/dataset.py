"""Data YAML loading and validation before any training starts.

detkd reads the same data YAML as Ultralytics (``path``, ``train``, ``val``, ``names``/``nc``), checks it up front
and reports the first problem as one line naming the file: a YAML that points nowhere, an image that does not
decode, a label row out of range. Relative paths resolve against the ``path`` key, then the working directory, then
the YAML's own folder; Ultralytics then receives a copy of the YAML with absolute paths, so both agree.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from detkd.errors import InputFileError

LOGGER = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".bmp", ".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".dng", ".mpo", ".pfm"}


@dataclass
class DataSpec:
    """A validated data YAML.

    Attributes:
        yaml_path: the file it came from.
        root: the dataset root (absolute).
        splits: split name -> list of image folders or list files (absolute).
        names: class index -> name.
        extra: other keys of the YAML, kept for Ultralytics (e.g. ``channels``).
        validated: True once every label row and image header of train and val has been checked.
    """

    yaml_path: Path
    root: Path
    splits: dict[str, list[Path]]
    names: dict[int, str]
    extra: dict[str, Any] = field(default_factory=dict)
    validated: bool = False

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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = f"# resolved by detkd from {self.yaml_path}\n"
        path.write_text(header + yaml.safe_dump(self.to_ultralytics(), sort_keys=False))
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


def _iter_split_images(src: Path) -> Iterator[Path]:
    if src.is_dir():
        yield from sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    else:  # a text file listing images, relative to its folder
        for line in src.read_text().splitlines():
            line = line.strip()
            if line:
                p = Path(line)
                yield p if p.is_absolute() else (src.parent / p).resolve()


def list_images(spec: DataSpec, split: str) -> list[Path]:
    """All images of a split, sorted; raises when there are none."""
    images = [p for src in spec.split_paths(split) for p in _iter_split_images(src)]
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


def read_label_rows(label: Path, nc: int) -> list[tuple[int, float, float, float, float]]:
    """Parse a YOLO label file into (class, cx, cy, w, h) rows; polygons become their bounding boxes.

    A missing file means an image without objects. Raises ``InputFileError`` naming ``file:line`` for rows with
    the wrong number of columns, non-numbers, class ids outside [0, nc) or coordinates outside [0, 1].
    """
    if not label.is_file():
        return []
    rows = []
    for lineno, line in enumerate(label.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label}:{lineno}"
        if len(fields) < 5 or (len(fields) > 5 and len(fields) % 2 == 0):
            raise InputFileError(where, f"expected 'class cx cy w h' (5 columns) or a polygon, got {len(fields)}")
        try:
            values = [float(x) for x in fields]
        except ValueError as e:
            raise InputFileError(where, f"non-numeric value ({e})") from e
        cls = values[0]
        if cls != int(cls) or not 0 <= cls < nc:
            raise InputFileError(where, f"class id {fields[0]} is outside 0..{nc - 1}")
        coords = values[1:]
        if any(not -1e-3 <= v <= 1 + 1e-3 for v in coords):
            raise InputFileError(where, "coordinates must be normalised to [0, 1]")
        if len(coords) == 4:
            cx, cy, w, h = coords
        else:  # polygon x1 y1 x2 y2 ...
            xs, ys = coords[0::2], coords[1::2]
            cx, cy, w, h = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)
        if w <= 0 or h <= 0:
            raise InputFileError(where, "box has zero width or height")
        rows.append((int(cls), cx, cy, w, h))
    return rows


@dataclass
class SplitReport:
    split: str
    images: int
    boxes: int
    background: int  # images without labels


def validate_split(spec: DataSpec, split: str, *, check_images: bool = True) -> SplitReport:
    """Check every label row and (optionally) that every image file decodes; raise on the first problem."""
    images = list_images(spec, split)
    boxes = background = 0
    for img in images:
        if check_images:
            if img.stat().st_size == 0:
                raise InputFileError(img, "image file is empty")
            try:
                with Image.open(img) as im:
                    im.verify()
            except Exception as e:  # PIL raises several types for undecodable files
                raise InputFileError(img, f"image does not decode ({type(e).__name__}: {e})") from e
        rows = read_label_rows(label_path_for(img), spec.nc)
        boxes += len(rows)
        background += not rows
    return SplitReport(split=split, images=len(images), boxes=boxes, background=background)
