"""Soft boxes and unlabeled images inside Ultralytics' data pipeline.

*Soft boxes travel as instances.* Each cached teacher detection of an image is appended to the image's labels as
one more box, with a negative class, ``-(1 + id)`` (``id`` locates the box in the cache; classes are float64 here,
exact up to 2**53). Mosaic, random affine and perspective, letterbox, flips, mixup and crops then move, clip and
drop soft boxes exactly as they move, clip and drop the ground truth: they are the same rows of the same arrays.
After collation :func:`split_soft` takes them out of the batch again, before anything reads the labels.

*Flips are recorded.* A DFL teacher's per-side distributions swap sides under a flip, which a box alone cannot
tell; the flips of the pipeline are Ultralytics' own ``RandomFlip`` with its decision kept in the labels
(:class:`RecordingFlip`).

*Unlabeled images mix with their own kind.* Mosaic, mixup, cutmix and copy-paste draw their other images from the
pool of the first one (labelled with labelled, unlabeled with unlabeled), so every training image is wholly one or
the other and the detection loss can leave unlabeled ones out (:mod:`detkd.offline.unlabeled`). The share of
unlabeled images per batch is fixed by :class:`MixedBatches`.

The boxes come from a :class:`SoftBoxSource` (a teacher cache: :class:`detkd.offline.source.SoftLabelSource`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from detkd._offline import offline_env
from detkd.errors import DetkdError

with offline_env():  # Ultralytics reads its offline switches when first imported
    from ultralytics.data.augment import RandomFlip

FLIP_KEYS = {"horizontal": "detkd_fliplr", "vertical": "detkd_flipud"}


class SoftBoxSource(Protocol):
    """Where an image's soft boxes come from (a teacher cache: :class:`detkd.offline.source.SoftLabelSource`)."""

    def for_image(self, im_file: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(normalised xywh (m, 4) float32, ids (m,) float64) of the image's soft boxes; ``shape`` is (h, w)."""
        ...


def add_soft_boxes(label: dict[str, Any], source: SoftBoxSource) -> dict[str, Any]:
    """Append an image's soft boxes to its label rows (class ``-(1 + id)``, float64)."""
    xywh, ids = source.for_image(label["im_file"], label["ori_shape"] if "ori_shape" in label else label["shape"])
    cls = np.asarray(label["cls"], dtype=np.float64).reshape(-1, 1)
    label["cls"] = np.concatenate((cls, -(1.0 + ids.reshape(-1, 1))))
    label["bboxes"] = np.concatenate((np.asarray(label["bboxes"], np.float32).reshape(-1, 4), xywh))
    return label


class RecordingFlip(RandomFlip):
    """Ultralytics' ``RandomFlip`` that also records, in the labels, whether it flipped."""

    def get_params(self, labels: dict[str, Any]) -> dict[str, Any]:
        params = super().get_params(labels)
        labels[FLIP_KEYS[self.direction]] = bool(labels.get(FLIP_KEYS[self.direction], False)) ^ bool(params["flip"])
        return params


def record_flips(compose: Any) -> None:
    """Replace every ``RandomFlip`` in a ``Compose`` (recursively) by a :class:`RecordingFlip` with its settings."""
    items = getattr(compose, "transforms", None)
    if items is None:
        return
    for i, t in enumerate(items):
        if type(t) is RandomFlip:
            flip = RecordingFlip(p=t.p, direction=t.direction, flip_idx=t.flip_idx)
            items[i] = flip
        else:
            record_flips(t)
    for t in items:
        inner = getattr(t, "pre_transform", None)
        if inner is not None:
            record_flips(inner)


def mix_within_pools(compose: Any, pool_of: Callable[[str], int], pools: Sequence[Sequence[int]]) -> None:
    """Make every mixing transform (mosaic, mixup, cutmix, copy-paste) draw its other images from the pool of the
    image it starts from. Ultralytics' own draw happens first (the random stream is unchanged), and its index is
    mapped into the pool."""
    seen: set[int] = set()

    def patch(t: Any) -> None:
        if id(t) in seen:
            return
        seen.add(id(t))
        if hasattr(t, "get_indexes") and hasattr(t, "dataset") and hasattr(t, "get_params"):
            original_params, original_indexes = t.get_params, t.get_indexes
            state: dict[str, int] = {"pool": 0}

            def get_params(labels: dict[str, Any], _orig: Any = original_params, _state: Any = state) -> Any:
                _state["pool"] = pool_of(labels.get("im_file", ""))
                return _orig(labels)

            def get_indexes(_orig: Any = original_indexes, _state: Any = state) -> Any:
                drawn = _orig()
                pool = pools[_state["pool"]]
                if isinstance(drawn, (list, tuple)):
                    return [pool[int(i) % len(pool)] for i in drawn]
                return pool[int(drawn) % len(pool)]

            t.get_params, t.get_indexes = get_params, get_indexes
        for child in getattr(t, "transforms", None) or []:
            patch(child)
        inner = getattr(t, "pre_transform", None)
        if inner is not None:
            patch(inner)

    patch(compose)


def split_soft(batch: dict[str, Any]) -> dict[str, Any]:
    """Take the soft boxes out of a collated batch: ``cls``/``bboxes``/``batch_idx`` keep the ground truth only
    (``cls`` float32 again), and ``soft_ids`` (float64), ``soft_bboxes`` (normalised xywh), ``soft_batch_idx``
    hold the soft boxes. Flip records become ``soft_flips`` (B, 2) bool (left-right, up-down). ``soft_ids`` are
    int64 (ids are integers below 2**53; float64 would not travel to every device)."""
    cls = batch["cls"].view(-1)
    soft = cls < 0
    if "soft_ids" not in batch:
        batch["soft_ids"] = (-cls[soft].double() - 1.0).round().long()
        batch["soft_bboxes"] = batch["bboxes"][soft]
        batch["soft_batch_idx"] = batch["batch_idx"][soft]
        keep = ~soft
        batch["cls"] = batch["cls"][keep].float()
        batch["bboxes"] = batch["bboxes"][keep]
        batch["batch_idx"] = batch["batch_idx"][keep]
    n = int(batch["img"].shape[0])
    flips = [batch.get(FLIP_KEYS["horizontal"]), batch.get(FLIP_KEYS["vertical"])]
    batch["soft_flips"] = torch.tensor(
        [[bool(f[i]) if f is not None else False for f in flips] for i in range(n)], dtype=torch.bool
    ).view(n, 2)
    return batch


class MixedBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of ``batch - k`` labelled and ``k = round(fraction * batch)`` unlabeled indices.

    An epoch is one pass over the labelled images (each once, shuffled); the unlabeled ones are drawn in their own
    shuffled passes, continuing across epochs. The order is a function of ``(seed, passes)`` only, so a resumed run
    draws the uninterrupted run's batches (``sampler.passes`` is saved like :class:`EpochShuffle`'s).
    """

    def __init__(self, labelled: Sequence[int], unlabeled: Sequence[int], batch: int, fraction: float, seed: int):
        from detkd.utils.rng import EpochShuffle

        if not labelled:
            raise DetkdError("training needs at least one labelled image besides the unlabeled ones")
        self.labelled, self.unlabeled = list(labelled), list(unlabeled)
        self.k = min(max(round(fraction * batch), 1 if fraction > 0 else 0), batch - 1) if self.unlabeled else 0
        self.per = batch - self.k
        self.seed = seed
        self.sampler = EpochShuffle(len(self.labelled), seed)  # its ``passes`` is the whole state

    def __len__(self) -> int:
        return math.ceil(len(self.labelled) / self.per)

    def _unlabeled_stream(self, start: int) -> Iterator[int]:
        n = len(self.unlabeled)
        p, offset = divmod(start, n)
        while True:
            g = torch.Generator()
            g.manual_seed((self.seed * 7_000_003 + p + 1) % (1 << 63))
            order = torch.randperm(n, generator=g).tolist()
            for i in order[offset:]:
                yield self.unlabeled[i]
            p, offset = p + 1, 0

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.sampler.passes
        labelled = [self.labelled[i] for i in self.sampler]
        unl = self._unlabeled_stream(epoch * len(self) * self.k) if self.k else iter(())
        for b in range(len(self)):
            part = labelled[b * self.per : (b + 1) * self.per]
            yield part + [next(unl) for _ in range(self.k)]
