"""Checks of the arguments that training, evaluation, export and the cache all take: sizes, devices, threads.

Each bad value is one line naming the option (a :class:`~detkd.errors.ConfigError`), before any work starts."""

from __future__ import annotations

import os
from typing import Any

import torch

from detkd.errors import ConfigError

MAX_IMGSZ = 8192


def check_int(name: str, value: Any, low: int, what: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} {value!r}: must be an integer >= {low}{what}")


def check_device(device: Any) -> None:
    """``cpu``, ``mps``, a CUDA index (``0``), several (``0,1``), ``cuda`` or ``cuda:N`` that this machine has."""
    if device is None:
        return
    text = str(device).strip().lower().replace("cuda:", "")
    if text in ("cpu", "mps"):
        return
    indices = text.split(",") if text != "cuda" else ["0"]
    if not all(i.strip().isdigit() for i in indices):
        raise ConfigError(f"--device {device!r}: expected cpu, a GPU index (0), several (0,1), or cuda:N")
    count = torch.cuda.device_count()
    missing = [i.strip() for i in indices if int(i) >= count]
    if missing:
        have = f"GPUs 0..{count - 1}" if count else "no CUDA GPU"
        raise ConfigError(f"--device {device}: no CUDA device {', '.join(missing)} on this machine ({have}); "
                          "use --device cpu")  # fmt: skip


def check_threads(threads: int | None) -> None:
    if threads is not None:
        check_int("--threads", threads, 1)
        most = max(64, 4 * (os.cpu_count() or 1))
        if threads > most:
            raise ConfigError(f"--threads {threads}: this machine has {os.cpu_count()} cores (at most {most})")


def check_imgsz(imgsz: Any) -> None:
    """A training or inference size in pixels: a positive integer up to :data:`MAX_IMGSZ`."""
    check_int("--imgsz", imgsz, 1, " (a size in pixels, rounded up to a multiple of the model's stride)")
    if imgsz > MAX_IMGSZ:
        raise ConfigError(f"--imgsz {imgsz}: at most {MAX_IMGSZ} pixels")
