"""The teacher cache's soft boxes of each training image, looked up by the image's content key (what
:mod:`detkd.data.soft_labels` appends to the image's label rows)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from detkd.errors import DetkdError
from detkd.offline.cache import TeacherCache


class SoftLabelSource:
    """The cache's soft boxes for each training image (looked up by the image's content key).

    Args:
        cache: the opened cache.
        digests: absolute training path (as Ultralytics reads it) -> content key of the user's image.
    """

    def __init__(self, cache: TeacherCache, digests: Mapping[str, str]) -> None:
        self.cache = cache
        self.digests = dict(digests)

    def for_image(self, im_file: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(normalised xywh (m, 4) float32, ids (m,) float64) of the image's soft boxes; ``shape`` is (h, w)."""
        digest = self.digests.get(str(Path(im_file).absolute()))
        found = self.cache.image(digest) if digest is not None else None
        if found is None:
            raise DetkdError(f"{im_file}: not in the teacher cache {self.cache.folder}")
        boxes, ids, _ = found
        h, w = shape
        xywh = np.stack(
            ((boxes[:, 0] + boxes[:, 2]) / 2 / w, (boxes[:, 1] + boxes[:, 3]) / 2 / h,
             (boxes[:, 2] - boxes[:, 0]) / w, (boxes[:, 3] - boxes[:, 1]) / h), axis=1,
        ).astype(np.float32)  # fmt: skip
        keep = (xywh[:, 2] > 0) & (xywh[:, 3] > 0)
        return xywh[keep], ids[keep]
