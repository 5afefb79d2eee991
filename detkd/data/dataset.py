"""Data YAML loading before any training starts.

detkd reads the same data YAML as Ultralytics (``path``, ``train``, ``val``, ``names``/``nc``), checks it up front
and reports a problem as one line naming the file: a missing key, a path that points nowhere, names that do not
match ``nc``. Splits resolve against the dataset root only (``path``, or the YAML's own folder without one), as
Ultralytics resolves them; Ultralytics then receives a copy of the YAML with absolute paths and image lists, so both
agree. The per-sample checks (images that do not decode, malformed label rows) live in :mod:`detkd.data.checks`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from detkd._io import read_text, read_yaml
from detkd.data.split_lists import plan_split_list, write_split_list
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

    def plan_resolved(self, path: str | Path) -> None:
        """Record the paths :meth:`write_resolved` lists for each sample, without writing anything."""
        for report in self.reports.values():
            plan_split_list(report, Path(path).parent / "data")

    def write_resolved(self, path: str | Path) -> Path:
        """Write the YAML Ultralytics trains on: every checked split becomes an image list of its usable samples in
        ``<path folder>/data/`` (with ``report.json`` saying what was left out and why)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_ultralytics()
        folder = path.parent / "data"
        for split, report in self.reports.items():  # Ultralytics reads exactly the images detkd checked
            data[split] = str(write_split_list(report, folder))
        if self.reports:
            folder.mkdir(exist_ok=True)
            summary = {split: r.to_dict() for split, r in self.reports.items()}
            (folder / "report.json").write_text(json.dumps({"source": str(self.yaml_path), **summary}, indent=2))
        header = f"# resolved by detkd from {self.yaml_path}\n"
        path.write_text(header + yaml.safe_dump(data, sort_keys=False))
        return path


def image_formats() -> set[str]:
    """The file suffixes Ultralytics reads as images (lower case, no dot)."""
    from ultralytics.data.utils import IMG_FORMATS

    return set(IMG_FORMATS)


def source_images(src: Path, files: list[Path], formats: AbstractSet[str]) -> list[Path]:
    """The images among a split source's files: a folder's files with an image suffix; a list's entries as listed
    (an entry of another type is then reported by the sample check, not silently dropped)."""
    return [p for p in files if p.suffix.lower().lstrip(".") in formats] if src.is_dir() else files


MAX_LIST_BYTES = 1 << 30  # an image list of 10 million paths is well under 1 GiB


def _names(data: dict[str, Any], yaml_path: Path) -> dict[int, str]:
    names = data.get("names")
    nc = data.get("nc")
    if names is None and nc is None:
        raise InputFileError(yaml_path, "needs 'names' (or at least 'nc')")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int)):
        hint = f" (write nc: {nc.strip()} without quotes)" if isinstance(nc, str) and nc.strip().isdigit() else ""
        raise InputFileError(yaml_path, f"'nc' must be an integer, got the {type(nc).__name__} {nc!r}{hint}")
    if nc is not None and nc < 1:
        raise InputFileError(yaml_path, f"'nc: {nc}' must be at least 1")
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
    bad = [(k, v) for k, v in out.items() if not isinstance(v, (str, int, float)) or isinstance(v, bool)]
    if bad:
        raise InputFileError(yaml_path, f"class {bad[0][0]}'s name must be text, got {bad[0][1]!r}")
    result = {k: str(v) for k, v in sorted(out.items())}
    first: dict[str, int] = {}
    for k, v in result.items():
        if v in first:  # a teacher class mapped by name would then feed two student classes
            raise InputFileError(yaml_path, f"class name '{v}' is used twice (classes {first[v]} and {k})")
        first[v] = k
    return result


def _root(data: dict[str, Any], yaml_path: Path, yaml_dir: Path) -> Path:
    """The dataset root: ``path`` (absolute, or relative to the working directory, then to the YAML's folder, as
    Ultralytics looks), or the YAML's folder when there is none."""
    if not data.get("path"):
        return yaml_dir
    if not isinstance(data["path"], str):
        raise InputFileError(yaml_path, f"'path: {data['path']!r}' must be a folder path")
    p = Path(data["path"]).expanduser()
    candidates = [p] if p.is_absolute() else [(Path.cwd() / p).resolve(), (yaml_dir / p).resolve()]
    for c in candidates:
        if c.is_dir():
            return c
        if c.exists():
            raise InputFileError(yaml_path, f"'path: {data['path']}' is a file ({c}); it must be the dataset folder")
    raise InputFileError(yaml_path, f"dataset root 'path: {data['path']}' does not exist")


def _split_source(yaml_path: Path, key: str, rel: Any, root: Path) -> Path:
    """One folder or image list of a split, resolved against the dataset root only (as Ultralytics resolves it)."""
    if not isinstance(rel, str) or not rel.strip():
        raise InputFileError(yaml_path, f"'{key}: {rel!r}' must be a folder or an image-list path")
    p = Path(rel).expanduser()
    found = p if p.is_absolute() else (root / p).resolve()
    if not found.exists() and not p.is_absolute() and rel.startswith("../"):  # Ultralytics' own fallback
        found = (root / rel[3:]).resolve()
    if not found.exists():
        elsewhere = not p.is_absolute() and (Path.cwd() / p).exists()
        hint = (
            f"; a '{rel}' exists under the working directory, but splits resolve against the dataset root"
            if elsewhere
            else ""
        )
        raise InputFileError(yaml_path, f"'{key}: {rel}' points nowhere under the dataset root {root}{hint}")
    if found.is_dir():
        return found
    if not found.is_file():
        raise InputFileError(yaml_path, f"'{key}: {rel}' is a device or a FIFO, not a folder or an image list")
    if found.suffix.lower().lstrip(".") in image_formats():
        raise InputFileError(
            yaml_path, f"'{key}: {rel}' is a single image; a split is a folder of images or a .txt list of them"
        )
    return found


def load_data_spec(path: str | Path) -> DataSpec:
    """Read and check a data YAML: keys present, paths that exist under the dataset root, consistent class names.

    Raises:
        InputFileError: naming the YAML and the problem.
    """
    yaml_path = Path(path)
    data = read_yaml(yaml_path, "data YAML")
    if not isinstance(data, dict):
        raise InputFileError(yaml_path, "a data YAML must be a mapping with 'train', 'val' and 'names'")
    yaml_dir = yaml_path.resolve().parent
    names = _names(data, yaml_path)
    root = _root(data, yaml_path, yaml_dir)
    splits: dict[str, list[Path]] = {}
    for key in ("train", "val", "test", "unlabeled"):
        value = data.get(key)
        if value is None:
            if key in ("train", "val"):
                raise InputFileError(yaml_path, f"key '{key}' is missing")
            continue
        sources = [_split_source(yaml_path, key, rel, root) for rel in (value if isinstance(value, list) else [value])]
        repeated = sorted({str(s) for s in sources if sources.count(s) > 1})
        if repeated:
            LOGGER.warning("%s: '%s' lists %s more than once: its images are used that many times per epoch",
                           yaml_path, key, ", ".join(repeated))  # fmt: skip
        splits[key] = sources
    if sorted(splits["train"]) == sorted(splits["val"]):
        LOGGER.warning(
            "%s: train and val are the same images: validation mAP then measures memorisation, not generalisation",
            yaml_path,
        )
    extra = {k: v for k, v in data.items() if k not in {"path", "train", "val", "test", "names", "nc"}}
    channels = extra.get("channels", 3)
    if channels != 3 or isinstance(channels, bool):
        raise InputFileError(
            yaml_path, f"'channels: {channels!r}': detkd trains 3-channel (RGB or replicated grayscale) detectors only"
        )
    return DataSpec(yaml_path=yaml_path, root=root, splits=splits, names=names, extra=extra)


def add_unlabeled(spec: DataSpec, sources: list[str | Path]) -> None:
    """Add folders or image lists of unlabeled images (``--unlabeled``) to the spec's ``unlabeled`` split."""
    for src in sources:
        p = Path(src).expanduser().absolute()
        if not p.exists():
            raise InputFileError(p, "unlabeled image folder or list not found (--unlabeled)")
        if not (p.is_dir() or p.is_file()):
            raise InputFileError(p, "is not a folder or an image list (--unlabeled)")
        spec.splits.setdefault("unlabeled", [])
        if p not in spec.splits["unlabeled"]:
            spec.splits["unlabeled"].append(p)


def _walk(root: Path) -> list[Path]:
    """Files under ``root`` (sorted), hidden names left out as Ultralytics' glob does; symlinked folders are followed
    once each, so a link loop is reported instead of repeating the images behind it."""
    seen: set[str] = set()
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            LOGGER.warning("%s: a symbolic link leads back to %s; its images are counted once", dirpath, real)
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath, f) for f in filenames if not f.startswith(".")]
    return sorted(p for p in files if p.is_file())


def _split_files(src: Path) -> list[Path]:
    """The files of one split source: everything under a folder (sorted), or the entries of an image list file."""
    if src.is_dir():
        return _walk(src)
    files = []
    for line in read_text(src, "image list", max_bytes=MAX_LIST_BYTES).splitlines():  # relative to its folder
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
    formats = image_formats()
    images = [p for src, files in iter_split_sources(spec, split) for p in source_images(src, files, formats)]
    if not images:
        raise InputFileError(spec.yaml_path, f"split '{split}' has no images")
    return images
