"""Evaluation reports: ``metrics.json`` and a Markdown table (pycocotools and Ultralytics' definitions side by side)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detkd.eval.coco import STAT_NAMES, EvalResult


def fmt(v: float | None, digits: int = 3) -> str:
    """A metric for a table; ``n/a`` when a subset has no ground truth.

    >>> fmt(0.12345), fmt(None)
    ('0.123', 'n/a')
    """
    return "n/a" if v is None else f"{v:.{digits}f}"


def eval_markdown(result: EvalResult, title: str) -> str:
    m = result.metrics
    lines = [
        f"# {title}",
        "",
        f"- split: `{result.settings.get('split')}`, {result.images} images, imgsz {result.settings.get('imgsz')}, "
        f"{result.settings.get('letterbox', 'square')} letterbox, runtime {result.settings.get('runtime')}",
        f"- ground truth: {result.ground_truth}",
        f"- speed: {result.images_per_second:.1f} images/s (preprocess + inference + NMS)",
        "",
        "| " + " | ".join(STAT_NAMES[:6]) + " |",
        "|" + "---|" * 6,
        "| " + " | ".join(fmt(m[k]) for k in STAT_NAMES[:6]) + " |",
        "",
    ]
    y = result.yolo
    if y:
        lines += [
            "Ultralytics' definition (``yolo val``, ``results.csv``) of the same detections:",
            "",
            "| P | R | mAP50 | mAP50-95 |",
            "|---|---|---|---|",
            f"| {fmt(y['precision'])} | {fmt(y['recall'])} | {fmt(y['mAP50'])} | {fmt(y['mAP50-95'])} |",
            "",
        ]
    yolo_ap = y.get("per_class", {}) if y else {}
    lines += [
        "| class | AP (pycocotools) | mAP50-95 (Ultralytics) |",
        "|---|---|---|",
        *[f"| {name} | {fmt(ap)} | {fmt(yolo_ap.get(name))} |" for name, ap in result.per_class.items()],
        "",
    ]
    return "\n".join(lines)


def write_eval_report(result: EvalResult, out_dir: Path, title: str, extra: dict[str, Any] | None = None) -> Path:
    """Write ``metrics.json`` and ``metrics.md`` into ``out_dir``; returns the json path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**result.to_dict(), **(extra or {})}
    path = out_dir / "metrics.json"
    path.write_text(json.dumps(payload, indent=2))
    (out_dir / "metrics.md").write_text(eval_markdown(result, title))
    return path
