"""Statistics of a quality benchmark: per-run mean and spread over seeds, paired gains with confidence intervals,
and the fraction of the teacher-student gap closed."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

METRICS = ("mAP50-95", "mAP50", "APs", "APm", "APl")


def t_critical(df: int, confidence: float = 0.95) -> float:
    """Two-sided Student-t critical value (``df`` degrees of freedom)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, float | None]:
    """Mean, sample standard deviation and the t confidence interval of the mean (None below two values)."""
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "ci_low": None, "ci_high": None, "n": 0}
    mean = statistics.fmean(values)
    if n < 2:
        return {"mean": mean, "std": None, "ci_low": None, "ci_high": None, "n": 1}
    std = statistics.stdev(values)
    half = t_critical(n - 1, confidence) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n}


MIN_GAP = 0.002  # mAP50-95: below this the teacher-student gap is noise and a fraction of it means nothing


def gap_closed(gain: float | None, teacher: float | None, baseline: float | None) -> float | None:
    """``(KD - baseline) / (teacher - baseline)``; None where the teacher is not better than the baseline by at least
    :data:`MIN_GAP`."""
    if gain is None or teacher is None or baseline is None or teacher - baseline < MIN_GAP:
        return None
    return gain / (teacher - baseline)


# Runs compared with plain KD from the same teacher as well as with the baseline
SCHEMES_VS_KD = ("detkd-relation", "detkd-self", "detkd-born-again", "detkd-ta", "detkd-mutual")


def _values(jobs: dict[tuple[str, int], dict[str, Any]], run: str, seeds: Sequence[int], metric: str) -> list[float]:
    return [float(jobs[(run, s)][metric]) for s in seeds if (run, s) in jobs and jobs[(run, s)].get(metric) is not None]


def summarize(
    results: list[dict[str, Any]], teacher: dict[str, Any], runs: Sequence[str], seeds: Sequence[int]
) -> dict[str, Any]:
    """Per run: each metric's mean/std, the gain over the baseline paired by seed (mean, 95% CI, seeds won), the
    gap closed, training seconds and peak memory; for the scheme runs (:data:`SCHEMES_VS_KD`), also the gain over
    plain KD (``detkd``) paired by seed, and each KD run's gain per hour of its own training (a chain counts every
    stage it trained)."""
    jobs = {(r["run"], int(r["seed"])): r for r in results if r.get("seed") is not None}
    base = {s: jobs[("baseline", s)] for s in seeds if ("baseline", s) in jobs}
    base_mean = statistics.fmean(float(b["mAP50-95"]) for b in base.values()) if base else None
    out: dict[str, Any] = {}
    for run in runs:
        row: dict[str, Any] = {m: mean_ci(_values(jobs, run, seeds, m)) for m in METRICS}
        row["per_seed"] = {str(s): jobs[(run, s)]["mAP50-95"] for s in seeds if (run, s) in jobs}
        if run != "baseline" and base:
            paired = [float(jobs[(run, s)]["mAP50-95"]) - float(base[s]["mAP50-95"]) for s in base if (run, s) in jobs]
            gain = mean_ci(paired)
            row["gain"] = gain
            row["seeds_won"] = sum(d > 0 for d in paired)
            row["gap_closed"] = gap_closed(gain["mean"], teacher.get("mAP50-95"), base_mean)
        if run in SCHEMES_VS_KD and "detkd" in runs:
            kd = {s: jobs[("detkd", s)] for s in seeds if ("detkd", s) in jobs}
            vs = [float(jobs[(run, s)]["mAP50-95"]) - float(kd[s]["mAP50-95"]) for s in kd if (run, s) in jobs]
            row["vs_kd"] = mean_ci(vs)
            row["seeds_won_vs_kd"] = sum(d > 0 for d in vs)
        row["train_s"] = mean_ci(_values(jobs, run, seeds, "train_s"))["mean"]
        if row.get("gain") and row["gain"]["mean"] is not None and row["train_s"]:
            row["gain_per_hour"] = row["gain"]["mean"] / (row["train_s"] / 3600.0)
        mems = _values(jobs, run, seeds, "peak_rss_mb")
        gpu = _values(jobs, run, seeds, "peak_gpu_mb")
        row["peak_rss_mb"] = max(mems) if mems else None
        row["peak_gpu_mb"] = max(gpu) if gpu else None
        out[run] = row
    return out
