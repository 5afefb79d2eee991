"""Checks that an exported model still is the model: raw-output parity and CPU latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from detkd.eval.predict import Predictor, preprocess, read_image

# Tolerances for FP32 exports: class probabilities and box coordinates (input pixels).
SCORE_TOLERANCE = 2e-3
BOX_TOLERANCE = 0.05


@dataclass
class Parity:
    """Largest differences between two runtimes' raw outputs on the same inputs."""

    images: int
    max_abs_diff: float
    max_abs_diff_boxes: float
    max_abs_diff_scores: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def raw_parity(reference: Predictor, candidate: Predictor, images: Sequence[Path] | np.ndarray, imgsz: int) -> Parity:
    """Compare raw predictions (before NMS) of two runtimes on real images (or a given input batch)."""
    if isinstance(images, np.ndarray):
        x = images
    else:
        x, _ = preprocess([read_image(p) for p in images], imgsz)
    a, b = reference(x), candidate(x)
    if a.shape != b.shape:
        return Parity(len(x), float("inf"), float("inf"), float("inf"), passed=False)
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if reference.end2end:  # (B, N, 6): boxes, score, class
        boxes, scores = diff[..., :4], diff[..., 4:5]
    else:  # (B, 4 + nc, A)
        boxes, scores = diff[:, :4], diff[:, 4:]
    box_d, score_d = float(boxes.max()), float(scores.max())
    return Parity(
        images=len(x),
        max_abs_diff=float(diff.max()),
        max_abs_diff_boxes=box_d,
        max_abs_diff_scores=score_d,
        passed=box_d <= BOX_TOLERANCE and score_d <= SCORE_TOLERANCE,
    )


@dataclass
class Latency:
    """Batch-1 latency of the model call alone (no pre/post-processing), after warm-up."""

    runtime: str
    median_ms: float
    p90_ms: float
    runs: int

    def to_dict(self) -> dict:
        return asdict(self)


def measure_latency(predictor: Predictor, imgsz: int, *, runs: int = 50, warmup: int = 5) -> Latency:
    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    for _ in range(warmup):
        predictor(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        predictor(x)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return Latency(
        runtime=predictor.name,
        median_ms=statistics.median(times),
        p90_ms=times[min(len(times) - 1, int(0.9 * len(times)))],
        runs=runs,
    )
