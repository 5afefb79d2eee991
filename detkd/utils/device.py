"""Where torch runs: the device named on the command line, and the CPU threads it may use."""

from __future__ import annotations

import os

import torch


def torch_device_name(device: str | int | None) -> str:
    """A torch device from a CLI-style one: ``0`` -> ``cuda:0``; ``cpu`` and ``cuda:1`` unchanged; None -> cpu."""
    text = "cpu" if device is None else str(device)
    return f"cuda:{text}" if text.isdigit() else text


def set_cpu_threads(threads: int | None) -> int:
    """Use ``threads`` (default: every core) for torch on CPU; Ultralytics leaves one core idle otherwise."""
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n
