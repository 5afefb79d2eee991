"""Fixtures for offline KD: a cache whose soft boxes are a dataset's ground truth (so where they land after
augmentation can be checked against the ground truth itself), and datasets built through detkd's pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detkd.data.checks import split_report
from detkd.data.dataset import load_data_spec
from detkd.offline.cache import (
    CACHE_FORMAT,
    CACHE_VERSION,
    file_digest,
    write_manifest,
    write_shard,
)

BINS = 16


def gt_cache(data_yaml: Path, out: Path, *, reg_max: int = BINS, cells: bool = False) -> Path:
    """A teacher cache holding each training image's ground-truth boxes as soft boxes (class probability 0.9) with
    asymmetric DFL distributions: a broad left/top edge and a sharp right/bottom edge. With ``cells``, a score
    field of one stride-8 cell at each box's centre (the same class vector and distributions)."""
    spec = load_data_spec(data_yaml)
    samples = split_report(spec, "train").samples
    boxes, probs, dist, spacing, offsets, keys, sizes = [], [], [], [], [0], [], []
    field: list[list[float]] = []
    cell_offsets = [0]
    for s in samples:
        w, h = s.size
        for c, x, y, bw, bh in s.rows:
            boxes.append([(x - bw / 2) * w, (y - bh / 2) * h, (x + bw / 2) * w, (y + bh / 2) * h])
            p = np.full(spec.nc, 0.01, np.float32)
            p[int(c)] = 0.9
            probs.append(p)
            d = np.zeros((4, reg_max), np.float32)
            d[0, 2:7] = 0.2  # broad
            d[1, 2:7] = 0.2
            d[2, 4] = 1.0  # sharp
            d[3, 4] = 1.0
            dist.append(d)
            spacing.append(8.0)
            if cells:
                field.append([x * w, y * h, 8.0])
        offsets.append(len(boxes))
        cell_offsets.append(len(field))
        keys.append(np.frombuffer(bytes.fromhex(file_digest(s.image)), np.uint8))
        sizes.append([w, h])
    arrays: dict[str, Any] = {
        "keys": np.stack(keys),
        "sizes": np.asarray(sizes, np.int32),
        "offsets": np.asarray(offsets, np.int64),
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "probs": np.asarray(probs, np.float16).reshape(-1, spec.nc),
        "cell_offsets": np.asarray(cell_offsets, np.int64),
        "cells": np.asarray(field, np.float32).reshape(-1, 3),
        "cell_probs": (np.asarray(probs, np.float16) if cells else np.zeros((0, spec.nc), np.float16)).reshape(
            -1, spec.nc
        ),
    }
    cell_box = np.asarray(dist, np.float32) if cells else np.zeros((0, 4, reg_max), np.float32)
    if reg_max > 1:
        arrays["cell_dist"] = cell_box.astype(np.float16).reshape(-1, 4, reg_max)
    else:
        arrays["cell_ltrb"] = cell_box.reshape(-1, 4)
    if reg_max > 1:
        arrays["dist"] = np.asarray(dist, np.float16).reshape(-1, 4, reg_max)
        arrays["spacing"] = np.asarray(spacing, np.float32)
    out.mkdir(parents=True, exist_ok=True)
    digest = write_shard(out / "shard-00000.safetensors", arrays)
    names = [spec.names[i] for i in sorted(spec.names)]
    write_manifest(out, {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "names": names, "reg_max": reg_max, "class_mask": None,
        "field": cells, "teacher": "ground truth", "key": {"imgsz": 64, "names": names},
        "shards": [{"file": "shard-00000.safetensors", "images": len(samples), "boxes": len(boxes), "sha256": digest}],
    })  # fmt: skip
    return out


def training_dataset(data_yaml: Path, cache: Path | None, **hyp: Any) -> Any:
    """Ultralytics' training dataset as detkd builds it (checked labels, soft boxes from ``cache``)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset

    from detkd.data.checked_dataset import checked_labels
    from detkd.offline.cache import TeacherCache
    from detkd.offline.source import SoftLabelSource

    spec = load_data_spec(data_yaml)
    samples = split_report(spec, "train").samples
    extra: dict[str, Any] = {}
    if cache is not None:
        digests = {str(s.image.absolute()): file_digest(s.image) for s in samples}
        extra["soft"] = SoftLabelSource(TeacherCache(cache), digests)
    cfg = get_cfg(overrides={"imgsz": 64, **hyp})
    data = {"names": spec.names, "nc": spec.nc, "channels": 3}
    with checked_labels(samples, **extra):
        return build_yolo_dataset(cfg, str(samples[0].image.parent), 8, data, mode="train")


@pytest.fixture(scope="session")
def shapes_gt_cache(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gt_cache(shapes_data, tmp_path_factory.mktemp("gt_cache") / "cache")


@pytest.fixture(scope="session")
def shapes_cell_cache(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gt_cache(shapes_data, tmp_path_factory.mktemp("cell_cache") / "cache", cells=True)
