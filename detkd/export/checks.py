"""Checks that an exported model still is the model: raw-output parity, matched detections, latency, the mAP gate."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detkd.errors import ConfigError
from detkd.eval.predict import Predictor, read_image
from detkd.eval.yolo_metrics import box_iou
from detkd.infer.decode import postprocess
from detkd.infer.letterboxing import LetterboxMeta, preprocess

# Raw-output tolerances (class probabilities; box coordinates in input pixels) per precision. FP32 conversions must
# be numerically the model; FP16 and INT8 are judged by mAP, their raw differences are reported, not gated.
RAW_TOLERANCE = {"fp32": {"scores": 2e-3, "boxes": 0.05}, "fp16": {"scores": 0.03, "boxes": 1.0}}
DEFAULT_BUDGET = {"fp32": 0.5, "fp16": 0.5, "int8": 1.5}  # mAP50-95 points (1 point = 0.01)
MATCH_IOU = 0.5
TOP_K = 10


@dataclass
class Parity:
    """Two runtimes on the same inputs: largest raw differences and how many top detections agree."""

    images: int
    max_abs_diff_boxes: float
    max_abs_diff_scores: float
    top_detections: int  # reference detections compared (the top ``TOP_K`` per image above the deploy threshold)
    matched: int  # of those, found by the candidate with the same class and IoU >= MATCH_IOU
    mean_iou: float | None  # over matched detections
    passed: bool  # raw differences within the precision's tolerance (always True where none applies)
    tolerance: dict[str, float] | None

    @property
    def matched_fraction(self) -> float | None:
        return self.matched / self.top_detections if self.top_detections else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "matched_fraction": self.matched_fraction}


def _end2end_diff(a: np.ndarray, b: np.ndarray, top: int = 50) -> tuple[float, float]:
    """Largest box and score differences between two end-to-end outputs (B, N, 6), matched by content.

    The one-to-one head keeps its N best boxes; two runtimes may order near-equal scores differently, so each of
    the reference's ``top`` best rows is compared with the candidate row of the same class closest to it.
    """
    box_d = score_d = 0.0
    for ra, rb in zip(a.astype(np.float64), b.astype(np.float64), strict=True):
        for row in ra[np.argsort(-ra[:, 4])[:top]]:
            same = rb[rb[:, 5] == row[5]]
            if len(same) == 0:
                return float("inf"), float("inf")
            j = int(np.abs(same[:, :4] - row[:4]).max(axis=1).argmin())
            box_d = max(box_d, float(np.abs(same[j, :4] - row[:4]).max()))
            score_d = max(score_d, float(abs(same[j, 4] - row[4])))
    return box_d, score_d


def load_inputs(images: Sequence[Path] | np.ndarray, imgsz: int) -> tuple[np.ndarray, list[LetterboxMeta]]:
    """A preprocessed batch from image files, or a given (B, 3, S, S) batch as is (identity letterbox)."""
    if isinstance(images, np.ndarray):
        return images, [LetterboxMeta(1.0, 0, 0, imgsz, imgsz)] * len(images)
    return preprocess([read_image(p) for p in images], imgsz)


def raw_parity(
    reference: Predictor,
    candidate: Predictor,
    images: Sequence[Path] | np.ndarray,
    imgsz: int,
    *,
    precision: str = "fp32",
    conf: float = 0.25,
    iou: float = 0.7,
) -> Parity:
    """Compare raw predictions (before NMS) and the top detections (after NMS) of two runtimes."""
    x, metas = load_inputs(images, imgsz)
    a, b = reference(x), candidate(x)
    tol = RAW_TOLERANCE.get(precision)
    if a.shape != b.shape:
        return Parity(len(x), float("inf"), float("inf"), 0, 0, None, passed=False, tolerance=tol)
    if reference.end2end:
        box_d, score_d = _end2end_diff(a, b)
    else:
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        box_d, score_d = float(diff[:, :4].max()), float(diff[:, 4:].max())
    ref_dets = postprocess(a, metas, end2end=reference.end2end, conf=conf, iou=iou)
    cand_dets = postprocess(b, metas, end2end=candidate.end2end, conf=conf, iou=iou)
    total = matched = 0
    ious: list[float] = []
    for r, c in zip(ref_dets, cand_dets, strict=True):
        r = r[:TOP_K]
        total += len(r)
        if len(r) == 0 or len(c) == 0:
            continue
        overlap = box_iou(r, c, eps=1e-9) * (r[:, None, 5] == c[None, :, 5])
        best = overlap.max(axis=1)
        matched += int((best >= MATCH_IOU).sum())
        ious += best[best >= MATCH_IOU].tolist()
    passed = tol is None or (box_d <= tol["boxes"] and score_d <= tol["scores"])
    return Parity(len(x), box_d, score_d, total, matched, float(np.mean(ious)) if ious else None, passed, tol)


@dataclass
class Timing:
    median_ms: float
    p90_ms: float

    @classmethod
    def of(cls, times_ms: list[float]) -> Timing:
        s = sorted(times_ms)
        return cls(statistics.median(s), s[min(len(s) - 1, int(0.9 * len(s)))])


@dataclass
class Latency:
    """Batch-1 latency after warm-up: preprocessing (letterbox, scale), the model call, postprocessing (NMS)."""

    runtime: str
    runs: int
    threads: int | None
    preprocess: Timing
    inference: Timing
    postprocess: Timing
    total: Timing

    @property
    def median_ms(self) -> float:  # the model call, the figure runtimes are usually compared by
        return self.inference.median_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_latency(
    predictor: Predictor,
    imgsz: int,
    *,
    image: np.ndarray | None = None,
    runs: int = 50,
    warmup: int = 5,
    threads: int | None = None,
    conf: float = 0.25,
    iou: float = 0.7,
) -> Latency:
    """Time the whole per-frame pipeline on ``image`` (a BGR frame; a 640x480 noise frame when not given)."""
    if image is None:
        image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    pre, inf, post, total = [], [], [], []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        x, metas = preprocess([image], imgsz)
        t1 = time.perf_counter()
        raw = predictor(x)
        t2 = time.perf_counter()
        postprocess(raw, metas, end2end=predictor.end2end, conf=conf, iou=iou)
        t3 = time.perf_counter()
        if i >= warmup:
            pre.append((t1 - t0) * 1e3)
            inf.append((t2 - t1) * 1e3)
            post.append((t3 - t2) * 1e3)
            total.append((t3 - t0) * 1e3)
    return Latency(predictor.name, runs, threads, Timing.of(pre), Timing.of(inf), Timing.of(post), Timing.of(total))


@dataclass
class GateResult:
    passed: bool
    reason: str
    budget_points: float
    delta_points: float | None = None  # exported minus PyTorch mAP50-95, in points
    checks: list[str] = field(default_factory=list)
    conclusive: bool = True  # False: nothing measured could have failed this export (it does not pass)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_budget(spec: str | float | dict[str, float] | None) -> dict[str, float]:
    """``"1.0"`` (every precision) or ``"fp32=0.5,int8=2"`` -> budget in mAP50-95 points per precision.

    >>> parse_budget("int8=2")["int8"], parse_budget("int8=2")["fp32"]
    (2.0, 0.5)
    """
    budget = dict(DEFAULT_BUDGET)
    if spec is None:
        return budget
    if isinstance(spec, dict):
        items = list(spec.items())
    elif isinstance(spec, (int, float)) or "=" not in str(spec):
        try:
            points = float(spec)
        except ValueError:
            raise ConfigError(f"--budget {spec!r}: expected a number of mAP points or PRECISION=POINTS,...") from None
        if not math.isfinite(points) or points < 0:
            raise ConfigError(f"--budget {spec}: must be a finite number >= 0 (mAP50-95 points the export may lose)")
        return dict.fromkeys(budget, points)
    else:
        items = [tuple(part.split("=", 1)) for part in str(spec).split(",") if part.strip()]  # type: ignore[misc]
    for key, value in items:
        key = str(key).strip().lower()
        if key not in budget:
            raise ConfigError(f"--budget: unknown precision '{key}'; choose from: {', '.join(budget)}")
        try:
            budget[key] = float(value)
        except ValueError:
            raise ConfigError(f"--budget {key}={value!r}: expected a number of mAP50-95 points") from None
        if not math.isfinite(budget[key]) or budget[key] < 0:
            raise ConfigError(f"--budget {key}={value}: must be >= 0 (mAP50-95 points the export may lose)")
    return budget


MIN_GATE_MAP = 0.01  # PyTorch mAP50-95 below which an mAP comparison shows nothing about an export


def map_check_is_vacuous(reference_map: float, budget_points: float) -> bool:
    """True when even an export that detects nothing would pass the mAP comparison: PyTorch's own mAP50-95 is at
    or below the budget (in points), or below :data:`MIN_GATE_MAP`."""
    return reference_map * 100 <= budget_points or reference_map < MIN_GATE_MAP


def gate(
    name: str, precision: str, parity: Parity, maps: dict[str, dict[str, float]] | None, budget: dict[str, float]
) -> GateResult:
    """Pass or fail an export: mAP50-95 within the precision's budget of PyTorch's (when data was given), and for FP32
    (and FP16 without data) the raw outputs within tolerance.

    An mAP comparison that cannot fail (a model that scores about nothing: see :func:`map_check_is_vacuous`) is
    reported as proving nothing and the raw-output parity decides instead; an INT8 export, which has no raw-output
    tolerance, is then *inconclusive* and does not pass.
    """
    points = budget[precision]
    checks, ok = [], True
    delta = None
    use_map = maps is not None
    if maps is not None:
        ref, got = maps["pytorch"]["mAP50-95"], maps[name]["mAP50-95"]
        delta = (got - ref) * 100
        if map_check_is_vacuous(ref, points):
            use_map = False
            checks.append(
                f"mAP50-95 {got:.4f} vs PyTorch {ref:.4f}: proves nothing (PyTorch's own mAP is within the "
                f"{points:.2f}-point budget of zero or below {MIN_GATE_MAP}, so an export that detects nothing would "
                "pass; the raw outputs decide)"
            )
        else:
            map_ok = delta >= -points
            ok &= map_ok
            checks.append(
                f"mAP50-95 {got:.4f} vs PyTorch {ref:.4f} ({delta:+.2f} points; budget {points:.2f}): "
                f"{'pass' if map_ok else 'FAIL'}"
            )
    conclusive = True
    if parity.tolerance is not None and (precision == "fp32" or not use_map):
        ok &= parity.passed
        checks.append(
            f"raw outputs max |diff| boxes {parity.max_abs_diff_boxes:.2g} px (tolerance {parity.tolerance['boxes']}), "
            f"scores {parity.max_abs_diff_scores:.2g} (tolerance {parity.tolerance['scores']}): "
            f"{'pass' if parity.passed else 'FAIL'}"
        )
    elif maps is not None and not use_map:
        ok, conclusive = False, False
        checks.append(
            f"INCONCLUSIVE: {precision} exports have no raw-output tolerance, so nothing measured here shows this one "
            "works; gate it on a model that detects something (or use --fallback for a precision that can be checked)"
        )
    if not checks:
        raise ConfigError(f"{name}: an {precision} export can only be gated on mAP: pass --data")
    reason = f"{name}: " + "; ".join(checks)
    return GateResult(bool(ok), reason, points, delta, checks, conclusive)
