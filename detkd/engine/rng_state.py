"""The random streams a training step draws from (Python, NumPy, torch, CUDA, the loader's shuffle, each
Albumentations transform's own generators), saved into ``resume.pt`` and put back on resume, so the resumed run draws
what the uninterrupted one would have."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from detkd.errors import DetkdError
from detkd.utils.rng import epoch_shuffle


def augmenters(dataset: Any) -> list[Any]:
    """Objects with random streams of their own in a dataset's augmentations: each Albumentations ``Compose`` and,
    depth first, every transform inside it (each holds its own generators)."""
    transforms = getattr(getattr(dataset, "transforms", None), "transforms", None) or []
    found: list[Any] = []

    def walk(obj: Any) -> None:
        if hasattr(obj, "random_generator") and hasattr(obj, "py_random"):
            found.append(obj)
        for child in getattr(obj, "transforms", None) or []:
            walk(child)

    for t in transforms:
        inner = getattr(t, "transform", None)
        if inner is not None:
            walk(inner)
    return found


def _augmenter_state(a: Any) -> dict[str, Any]:
    return {"seed": getattr(a, "seed", None), "numpy": a.random_generator.bit_generator.state,
            "python": a.py_random.getstate()}  # fmt: skip


def rng_state(loader: Any) -> dict[str, Any]:
    """Every random stream a training step draws from, as tensors and plain values."""
    np_state: Any = np.random.get_state()
    shuffle = epoch_shuffle(loader)
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "shuffle_passes": shuffle.passes if shuffle is not None else None,
        "augment": [_augmenter_state(a) for a in augmenters(getattr(loader, "dataset", None))],
    }


def restore_rng(state: Mapping[str, Any], loader: Any) -> None:
    """Put every random stream back where :func:`rng_state` found it."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    shuffle = epoch_shuffle(loader)
    if shuffle is not None and state.get("shuffle_passes") is not None:
        shuffle.passes = int(state["shuffle_passes"])
    restore_augmenters(state, getattr(loader, "dataset", None))


def restore_augmenters(state: Mapping[str, Any], dataset: Any) -> None:
    """The augmentation pipelines' own random streams (again after Ultralytics rebuilds them, e.g. closing mosaic).

    A pipeline with another number of random streams than the saved one cannot continue the run's draws: that is an
    error, never a silent partial restore."""
    live, saved_streams = augmenters(dataset), list(state.get("augment") or [])
    if len(live) != len(saved_streams):
        raise DetkdError(
            f"resume: the training pipeline has {len(live)} augmentation random streams, the saved state "
            f"{len(saved_streams)}; the run was started with other augmentations (or another Albumentations), so it "
            "cannot continue its draws (start a new run)"
        )
    for aug, saved in zip(live, saved_streams, strict=True):
        if hasattr(aug, "seed"):
            aug.seed = saved["seed"]  # else Ultralytics reseeds a fresh pipeline at its first call
        aug.random_generator.bit_generator.state = saved["numpy"]
        py = saved["python"]
        aug.py_random.setstate((py[0], tuple(py[1]), py[2]))


def plain(value: Any) -> Any:
    """NumPy scalars as Python numbers (so the restricted unpickler reads them back)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value
