"""The teacher cache: a teacher's soft boxes for every image, on disk, keyed by what produced them.

Layout of a cache folder::

    cache.json               what made it (the key), the classes, and the shards in order
    shard-00000.safetensors  up to SHARD_IMAGES images' soft boxes (written whole, then renamed: never half a shard)
    ...

A shard is a `safetensors <https://github.com/huggingface/safetensors>`_ file (a JSON header and raw little-endian
arrays; no pickle, nothing in it runs): per image ``keys`` (n, 32) uint8, the SHA-256 of the image file's bytes,
``sizes`` (n, 2) int32 width and height and ``offsets`` (n + 1) int64 into the per-box arrays; per box ``boxes``
(m, 4) float32 xyxy pixels of the original image, ``probs`` (m, C) float16 class probabilities, and for DFL
teachers ``dist`` (m, 4, R) float16 per-side bin probabilities with ``spacing`` (m,) float32, the predicting
anchor's stride in original pixels. A dense teacher's score field (:mod:`detkd.teachers.soft`) is per image
``cell_offsets`` (n + 1) int64 into ``cells`` (k, 3) float32, an anchor's point and stride in original pixels,
``cell_probs`` (k, C) float16 and the anchor's own box: ``cell_dist`` (k, 4, R) float16 per-side bin
probabilities for DFL teachers, else ``cell_ltrb`` (k, 4) float32 distances in strides. A teacher that gives
detections only (torchvision, RT-DETR) has no cells.
Readers map each array straight from the file (:class:`numpy.memmap` at the offsets the header gives), so
opening a cache reads its headers only and a box is read when it is used.
Why this format (size, read speed, random access against NumPy ``.npz`` and one file per image) is measured in
``benchmarks/RESULTS.md``.

Keys: the cache records the teacher's files (SHA-256 of each), image size, class map, confidence threshold, box
and cell caps, the paired-modality folder and :data:`CACHE_VERSION`; a build with another key is refused with the
fields that differ; a build with the same key resumes, skipping images already cached (by content, so a moved
dataset still matches).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detkd._io import read_text
from detkd.errors import DetkdError, InputFileError
from detkd.utils.files import file_digest

CACHE_FORMAT = "detkd-teacher-cache"
CACHE_VERSION = 3  # 2: the score field (cells); 3: each cell's own box
MANIFEST = "cache.json"
SHARD_IMAGES = 256
MAX_HEADER_BYTES = 16 * 2**20
MAX_MANIFEST_BYTES = 64 * 2**20
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "U8": np.uint8}
# array name -> (dtype, trailing shape after the first axis; "C"/"R" are the cache's classes and bins)
_ARRAYS: dict[str, tuple[str, tuple[Any, ...]]] = {
    "keys": ("U8", (32,)),
    "sizes": ("I32", (2,)),
    "offsets": ("I64", ()),
    "boxes": ("F32", (4,)),
    "probs": ("F16", ("C",)),
    "dist": ("F16", (4, "R")),
    "spacing": ("F32", ()),
    "cell_offsets": ("I64", ()),
    "cells": ("F32", (3,)),
    "cell_probs": ("F16", ("C",)),
    "cell_dist": ("F16", (4, "R")),
    "cell_ltrb": ("F32", (4,)),
}
_DFL_ONLY = ("dist", "spacing", "cell_dist")
ID_BASE = 1 << 32  # a soft box's id: shard * ID_BASE + row (exact in float64)
CELL_BASE = 1 << 31  # ... and a cell's: shard * ID_BASE + CELL_BASE + row


def image_digests(paths: Iterable[Path], threads: int = 4) -> list[str]:
    """Content keys of many images (file reads release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(file_digest, paths))


def describe_key_change(cached: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """Which key fields differ, as ``field: cache has X, asked for Y`` clauses."""
    out = []
    for k in sorted(set(cached) | set(wanted)):
        if cached.get(k) != wanted.get(k):
            a, b = json.dumps(cached.get(k)), json.dumps(wanted.get(k))
            out.append(f"{k}: cache has {a[:120]}, asked for {b[:120]}")
    return "; ".join(out)


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_shard(path: Path, arrays: Mapping[str, np.ndarray]) -> str:
    """Write one shard atomically; returns its SHA-256."""
    from safetensors.numpy import save_file

    _atomic_write(path, lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp))
    return file_digest(path)


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(manifest, indent=1))

    _atomic_write(folder / MANIFEST, write)


def _shard_arrays(path: Path, nc: int, reg_max: int) -> dict[str, np.ndarray]:
    """The arrays of a shard mapped from the file, after checking its header against the cache's shapes."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
                raise InputFileError(path, "is not a safetensors file (bad header length)")
            header = json.loads(fh.read(n))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise InputFileError(path, f"cache shard cannot be read ({e})") from e
    if not isinstance(header, dict):
        raise InputFileError(path, "cache shard header is not a mapping")
    header.pop("__metadata__", None)
    want = {k for k in _ARRAYS if (k not in _DFL_ONLY or reg_max > 1) and (k != "cell_ltrb" or reg_max == 1)}
    if set(header) != want:
        raise InputFileError(path, f"cache shard holds {sorted(header)}, expected {sorted(want)}")
    dims = {"C": nc, "R": reg_max}
    out: dict[str, np.ndarray] = {}
    for name, spec in header.items():
        dtype, trailing = _ARRAYS[name]
        ok = isinstance(spec, dict) and spec.get("dtype") == dtype and isinstance(spec.get("shape"), list)
        shape: list[Any] = list(spec["shape"]) if ok else []
        expected_tail = [dims.get(t, t) for t in trailing]
        if not ok or len(shape) != 1 + len(trailing) or shape[1:] != expected_tail or not isinstance(shape[0], int):
            raise InputFileError(path, f"cache array '{name}' is {spec}, expected {dtype} (n, {expected_tail})")
        offsets = spec.get("data_offsets")
        begin, end = offsets if isinstance(offsets, list) and len(offsets) == 2 else (None, None)
        count = int(np.prod(shape))
        np_type: Any = _DTYPES[dtype]
        itemsize = np.dtype(np_type).itemsize
        if not (isinstance(begin, int) and isinstance(end, int) and end - begin == count * itemsize):
            raise InputFileError(path, f"cache array '{name}' has inconsistent offsets {begin}..{end}")
        if 8 + n + end > size:
            raise InputFileError(path, f"cache array '{name}' runs past the end of the file (truncated?)")
        out[name] = (
            np.memmap(path, dtype=np_type, mode="r", offset=8 + n + begin, shape=tuple(shape))
            if count
            else np.zeros(tuple(shape), np_type)
        )
    images, boxes, cells = out["keys"].shape[0], out["boxes"].shape[0], out["cells"].shape[0]
    if out["sizes"].shape[0] != images:
        raise InputFileError(path, "cache shard's image sizes do not match its images")
    for name, rows in (("offsets", boxes), ("cell_offsets", cells)):
        off = np.asarray(out[name])
        if off.shape[0] != images + 1 or off[0] != 0 or off[-1] != rows or (np.diff(off) < 0).any():
            raise InputFileError(path, f"cache shard's '{name}' do not match its rows")
    if any(out[k].shape[0] != boxes for k in ("probs", "dist", "spacing") if k in out):
        raise InputFileError(path, "cache shard's per-box arrays have different lengths")
    if (
        any(out[k].shape[0] != cells for k in ("cell_probs", "cell_dist", "cell_ltrb") if k in out)
        or max(cells, boxes) >= CELL_BASE
    ):
        raise InputFileError(path, "cache shard's cell arrays have different lengths")
    for name in ("boxes", "probs", "dist", "spacing", "cells", "cell_probs", "cell_dist", "cell_ltrb"):
        if name in out and out[name].size and not np.isfinite(out[name]).all():
            raise InputFileError(path, f"cache array '{name}' holds NaN or Inf")
    for name in ("probs", "cell_probs"):
        if out[name].size and (out[name].min() < 0 or out[name].max() > 1):
            raise InputFileError(path, f"cache array '{name}': class probabilities lie outside [0, 1]")
    if cells and (np.asarray(out["cells"][:, 2]) <= 0).any():
        raise InputFileError(path, "cache array 'cells' holds a stride <= 0")
    return out


@dataclass
class Entry:
    shard: int
    start: int
    end: int
    size: tuple[int, int]
    cell_start: int = 0
    cell_end: int = 0


def _manifest_field(manifest: dict[str, Any], path: Path, key: str, kind: type | tuple[type, ...]) -> Any:
    value = manifest.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise InputFileError(path, f"'{key}' is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise InputFileError(folder, "teacher cache folder not found (build one with `detkd cache`)")
    if not path.is_file():
        raise InputFileError(folder, f"is not a detkd teacher cache ({MANIFEST} missing; build one with `detkd cache`)")
    try:
        manifest = json.loads(read_text(path, "teacher cache manifest", max_bytes=MAX_MANIFEST_BYTES))
    except ValueError as e:
        raise InputFileError(path, f"is not valid JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise InputFileError(path, "is not a detkd teacher cache manifest")
    if manifest.get("version") != CACHE_VERSION:
        raise InputFileError(
            path, f"cache version {manifest.get('version')!r}; this detkd reads version {CACHE_VERSION}: rebuild it"
        )
    _manifest_field(manifest, path, "key", dict)
    names = _manifest_field(manifest, path, "names", list)
    if not names or not all(isinstance(n, str) for n in names):
        raise InputFileError(path, "'names' must list the class names")
    reg_max = _manifest_field(manifest, path, "reg_max", int)
    if not 1 <= reg_max <= 64:
        raise InputFileError(path, f"'reg_max' {reg_max} outside 1..64")
    for shard in _manifest_field(manifest, path, "shards", list):
        file = shard.get("file") if isinstance(shard, dict) else None
        if not isinstance(file, str) or Path(file).name != file or not file.endswith(".safetensors"):
            raise InputFileError(path, f"shard entry {shard!r} must name a .safetensors file in the cache folder")
    mask = manifest.get("class_mask")
    if mask is not None and (not isinstance(mask, list) or len(mask) != len(names)):
        raise InputFileError(path, "'class_mask' must list one 0/1 per class")
    return manifest


class TeacherCache:
    """A built cache, opened for reading (see module doc). Raises :class:`InputFileError` naming the file for
    anything that does not match the format."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.names: list[str] = list(self.manifest["names"])
        self.nc = len(self.names)
        self.reg_max = int(self.manifest["reg_max"])
        self.key: dict[str, Any] = dict(self.manifest["key"])
        self.imgsz = int(self.key.get("imgsz", 0))
        mask = self.manifest.get("class_mask")
        self.class_mask = None if mask is None else np.asarray(mask, dtype=np.float32)
        self.shard_files = [self.folder / s["file"] for s in self.manifest["shards"]]
        self._pid = -1
        self._arrays: list[dict[str, np.ndarray]] = []
        self.entries: dict[str, Entry] = {}
        for i, arrays in enumerate(self._open()):
            keys, sizes, off = arrays["keys"], np.asarray(arrays["sizes"]), np.asarray(arrays["offsets"])
            cell_off = np.asarray(arrays["cell_offsets"])
            for j in range(keys.shape[0]):
                size = (int(sizes[j, 0]), int(sizes[j, 1]))
                self.entries[bytes(keys[j]).hex()] = Entry(
                    i, int(off[j]), int(off[j + 1]), size, int(cell_off[j]), int(cell_off[j + 1])
                )

    def _open(self) -> list[dict[str, np.ndarray]]:
        if self._pid != os.getpid():  # mapped once per process (data-loader workers map their own)
            for f in self.shard_files:
                if not f.is_file():
                    raise InputFileError(f, "cache shard listed in cache.json is missing")
            self._arrays = [_shard_arrays(f, self.nc, self.reg_max) for f in self.shard_files]
            self._pid = os.getpid()
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"], state["_pid"] = [], -1
        return state

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def boxes_total(self) -> int:
        return sum(e.end - e.start for e in self.entries.values())

    @property
    def cells_total(self) -> int:
        return sum(e.cell_end - e.cell_start for e in self.entries.values())

    @property
    def has_field(self) -> bool:
        """True when the teacher left a score field (a dense head; see :mod:`detkd.teachers.soft`)."""
        return bool(self.manifest.get("field"))

    def describe(self) -> str:
        return (
            f"teacher cache {self.folder} ({len(self)} images, {self.boxes_total} soft boxes, {self.cells_total} "
            f"score cells, {self.nc} classes, {self.imgsz} px, teacher {self.manifest.get('teacher', '?')})"
        )

    def image(self, digest: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int]] | None:
        """(rows (m, 4) xyxy original pixels, ids (m,) float64, (w, h)) of an image, or None if not cached.

        Rows are its soft boxes, then its score cells as squares of one stride around their points (ids at
        ``CELL_BASE`` and above within the shard; :func:`is_cell`)."""
        e = self.entries.get(digest)
        if e is None:
            return None
        arrays = self._open()[e.shard]
        boxes = np.array(arrays["boxes"][e.start : e.end], dtype=np.float32)
        cells = np.array(arrays["cells"][e.cell_start : e.cell_end], dtype=np.float32)
        half = cells[:, 2:3] / 2
        squares = np.concatenate((cells[:, :2] - half, cells[:, :2] + half), axis=1)
        base = e.shard * float(ID_BASE)
        ids = np.concatenate(
            (
                base + np.arange(e.start, e.end, dtype=np.float64),
                base + CELL_BASE + np.arange(e.cell_start, e.cell_end, dtype=np.float64),
            )
        )
        return np.concatenate((boxes, squares)), ids, e.size

    def _locate(self, ids: np.ndarray, rows_of: str) -> tuple[np.ndarray, np.ndarray, list[dict[str, np.ndarray]]]:
        """(shard, row within the shard's ``rows_of`` arrays) of each id, checked against the cache."""
        ids = np.asarray(ids, dtype=np.float64)
        shard = (ids // ID_BASE).astype(np.int64)
        row = (ids - shard * float(ID_BASE)).astype(np.int64) % CELL_BASE
        arrays = self._open()
        for s in np.unique(shard):
            sel = row[shard == s]
            if not 0 <= s < len(arrays) or (sel >= arrays[s][rows_of].shape[0]).any() or (sel < 0).any():
                raise DetkdError(f"{self.folder}: soft box ids outside the cache (a cache changed during training?)")
        return shard, row, arrays

    def image_index(self, ids: np.ndarray) -> np.ndarray:
        """Per soft box (or cell) id, the number of the cached image it belongs to (unique across shards)."""
        ids = np.asarray(ids, dtype=np.float64)
        cell = is_cell(ids)
        out = np.zeros(len(ids), np.int64)
        for kind, offsets in ((~cell, "offsets"), (cell, "cell_offsets")):
            if not kind.any():
                continue
            shard, row, arrays = self._locate(ids[kind], "boxes" if offsets == "offsets" else "cells")
            base = np.cumsum([0] + [a["keys"].shape[0] for a in arrays])
            found = np.zeros(len(shard), np.int64)
            for s in np.unique(shard):
                sel = np.nonzero(shard == s)[0]
                found[sel] = base[s] + np.searchsorted(np.asarray(arrays[s][offsets]), row[sel], side="right") - 1
            out[kind] = found
        return out

    def payload(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Per soft box id: ``boxes`` (original pixels), ``probs`` and, for DFL teachers, ``dist`` and ``spacing``."""
        names = ["boxes", "probs"] + (["dist", "spacing"] if self.reg_max > 1 else [])
        return self._gather(ids, "boxes", {n: n for n in names})

    def field(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Per cell id: ``cells`` (point x, y and stride, original pixels), ``probs`` and ``box`` (n, 4, R): the
        anchor's own per-side bin probabilities, or (n, 4, 1) distances in strides."""
        box = "cell_dist" if self.reg_max > 1 else "cell_ltrb"
        out = self._gather(ids, "cells", {"cells": "cells", "probs": "cell_probs", "box": box})
        out["box"] = out["box"].reshape(len(out["cells"]), 4, -1)
        return out

    def _gather(self, ids: np.ndarray, rows_of: str, names: dict[str, str]) -> dict[str, np.ndarray]:
        shard, row, arrays = self._locate(ids, rows_of)
        out = {
            k: np.zeros((len(row), *arrays[0][n].shape[1:]) if arrays else (0,), np.float32) for k, n in names.items()
        }
        for s in np.unique(shard):
            sel = np.nonzero(shard == s)[0]
            for k, n in names.items():
                out[k][sel] = arrays[s][n][row[sel]]
        return out


def is_cell(ids: np.ndarray) -> np.ndarray:
    """True for the ids of score cells, False for soft boxes' (see :meth:`TeacherCache.image`)."""
    ids = np.asarray(ids, dtype=np.float64)
    return (ids - (ids // ID_BASE) * float(ID_BASE)) >= CELL_BASE
