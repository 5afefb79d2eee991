"""Ultralytics datasets whose labels are the ones detkd checked: no label cache read, none written.

Ultralytics' ``YOLODataset`` re-reads every label file and keeps the result in ``labels/*.cache`` beside the user's
labels: a NumPy pickle it loads with pickles allowed (so a dataset shipped with a crafted cache runs code when it
is read), written into the user's dataset folder (a read-only or shared dataset gets a warning at best),
and parsed by rules that differ from detkd's check (a file mixing box and polygon rows). Inside
:func:`checked_labels`, every dataset Ultralytics builds (training, validation, INT8 calibration) takes its labels
from detkd's own check instead (:mod:`detkd.data.checks`): what the data report counts is exactly what trains.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from detkd._offline import offline_env
from detkd.data.checks import Sample

with offline_env():  # Ultralytics reads its offline switches when first imported
    import ultralytics.data.build as ul_build
    from ultralytics.data.dataset import DATASET_CACHE_VERSION, YOLODataset


def _key(path: Any) -> str:
    return os.path.abspath(os.fspath(path))


def label_dict(sample: Sample, im_file: str) -> dict[str, Any]:
    """One sample in the form ``YOLODataset.get_labels`` returns (normalised xywh boxes, no segments)."""
    rows = np.asarray([r[1:] for r in sample.rows], dtype=np.float32).reshape(-1, 4)
    cls = np.asarray([r[0] for r in sample.rows], dtype=np.float32).reshape(-1, 1)
    w, h = sample.size
    return {
        "im_file": im_file,
        "shape": (h, w),
        "cls": cls,
        "bboxes": rows,
        "segments": [],
        "keypoints": None,
        "normalized": True,
        "bbox_format": "xywh",
    }


class CheckedYOLODataset(YOLODataset):
    """``YOLODataset`` whose labels come from detkd's checked samples (see module doc), and whose ``*.npy`` image
    files live in a folder of detkd's: Ultralytics reads, "refreshes" and deletes ``<image>.npy`` beside each image
    (so a stray ``.npy`` in a dataset would replace the checked image, or be deleted), and ``cache=disk`` writes
    them there.

    Args:
        samples: the usable samples of the split (their ``listed`` paths are what the image list names).
        npy_dir: where ``cache=disk`` keeps its image files (the run's folder); None: a private temporary folder.
        *args, **kwargs: as for ``YOLODataset``.
    """

    def __init__(
        self,
        *args: Any,
        samples: Sequence[Sample],
        npy_dir: Path | None = None,
        soft: Any = None,
        unlabeled: AbstractSet[str] = frozenset(),
        **kwargs: Any,
    ) -> None:
        self._checked = {_key(s.train_path): s for s in samples}
        self.soft = soft  # a detkd.data.soft_labels.SoftBoxSource: soft boxes travel as label rows
        self.unlabeled = frozenset(_key(p) for p in unlabeled)  # images that mix with their own kind only
        if npy_dir is None:
            npy_dir = Path(tempfile.mkdtemp(prefix="detkd-npy-"))
            weakref.finalize(self, shutil.rmtree, str(npy_dir), True)
        self._npy_dir = Path(npy_dir)
        self._npy_files: list[Path] = []
        super().__init__(*args, **kwargs)

    @property
    def npy_files(self) -> list[Path]:
        return self._npy_files

    @npy_files.setter
    def npy_files(self, paths: Sequence[Any]) -> None:
        """Ultralytics sets ``<image>.npy`` paths; each becomes a file named by its image's path in ``npy_dir``."""
        self._npy_dir.mkdir(parents=True, exist_ok=True)
        self._npy_files = [
            self._npy_dir / f"{hashlib.sha1(str(Path(p).with_suffix('')).encode()).hexdigest()[:20]}.npy" for p in paths
        ]

    def update_labels_info(self, label: dict[str, Any]) -> dict[str, Any]:
        if self.soft is not None:
            from detkd.data.soft_labels import add_soft_boxes

            label = add_soft_boxes(label, self.soft)
        return super().update_labels_info(label)

    def build_transforms(self, hyp: Any = None) -> Any:
        transforms = super().build_transforms(hyp)
        if self.augment and (self.soft is not None or self.unlabeled):
            from detkd.data.soft_labels import mix_within_pools, record_flips

            record_flips(transforms)
            if self.unlabeled:
                pools = [
                    [i for i, f in enumerate(self.im_files) if _key(f) not in self.unlabeled],
                    [i for i, f in enumerate(self.im_files) if _key(f) in self.unlabeled],
                ]
                mix_within_pools(transforms, lambda f: int(_key(f) in self.unlabeled), pools)
        return transforms

    def _load_or_scan_cache(self, cache_path: Any, cache_hash: str) -> tuple[dict[str, Any], bool]:
        labels = [label_dict(self._checked[_key(f)], f) for f in self.im_files if _key(f) in self._checked]
        found = sum(len(lb["cls"]) > 0 for lb in labels)
        results = (found, 0, len(labels) - found, 0, len(labels))  # found, missing, empty, corrupt, total
        cache = {"labels": labels, "results": results, "msgs": [], "hash": cache_hash}
        return {**cache, "version": DATASET_CACHE_VERSION}, False


@contextlib.contextmanager
def checked_labels(samples: Sequence[Sample], npy_dir: Path | None = None, **extra: Any) -> Iterator[None]:
    """While inside, ``build_yolo_dataset`` builds :class:`CheckedYOLODataset` for ``samples`` (one split);
    ``extra``: its ``soft`` and ``unlabeled`` arguments."""
    original = ul_build.YOLODataset
    ul_build.YOLODataset = partial(CheckedYOLODataset, samples=samples, npy_dir=npy_dir, **extra)  # type: ignore[misc, assignment]
    try:
        yield
    finally:
        ul_build.YOLODataset = original  # type: ignore[misc]
