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
import os
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np

from detkd._offline import ensure_offline
from detkd.data.checks import Sample

ensure_offline()

import ultralytics.data.build as ul_build  # noqa: E402
from ultralytics.data.dataset import DATASET_CACHE_VERSION, YOLODataset  # noqa: E402


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
    """``YOLODataset`` whose labels come from detkd's checked samples (see module doc).

    Args:
        samples: the usable samples of the split (their ``listed`` paths are what the image list names).
        *args, **kwargs: as for ``YOLODataset``.
    """

    def __init__(self, *args: Any, samples: Sequence[Sample], **kwargs: Any) -> None:
        self._checked = {_key(s.train_path): s for s in samples}
        super().__init__(*args, **kwargs)

    def _load_or_scan_cache(self, cache_path: Any, cache_hash: str) -> tuple[dict[str, Any], bool]:
        labels = [label_dict(self._checked[_key(f)], f) for f in self.im_files if _key(f) in self._checked]
        found = sum(len(lb["cls"]) > 0 for lb in labels)
        results = (found, 0, len(labels) - found, 0, len(labels))  # found, missing, empty, corrupt, total
        cache = {"labels": labels, "results": results, "msgs": [], "hash": cache_hash}
        return {**cache, "version": DATASET_CACHE_VERSION}, False


@contextlib.contextmanager
def checked_labels(samples: Sequence[Sample]) -> Iterator[None]:
    """While inside, ``build_yolo_dataset`` builds :class:`CheckedYOLODataset` for ``samples`` (one split)."""
    original = ul_build.YOLODataset
    ul_build.YOLODataset = partial(CheckedYOLODataset, samples=samples)  # type: ignore[misc, assignment]
    try:
        yield
    finally:
        ul_build.YOLODataset = original  # type: ignore[misc]
