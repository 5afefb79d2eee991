"""COCO mAP with pycocotools: AP, AP50, AP75, AP small/medium/large, per-class AP, images per second.

Errors from the evaluator propagate; they are never turned into warnings.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkd.data.coco import ground_truth_for_split
from detkd.data.dataset import DataSpec
from detkd.eval.predict import Predictor, iterate_batches, postprocess
from detkd.eval.yolo_metrics import yolo_metrics
from detkd.progress import progress_bar

LOGGER = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@dataclass
class EvalResult:
    """COCO metrics of one model on one split (None where a subset has no ground truth)."""

    metrics: dict[str, float | None]
    per_class: dict[str, float | None]
    images: int
    detections: int
    images_per_second: float
    ground_truth: str
    settings: dict[str, Any] = field(default_factory=dict)
    # the same detections scored by Ultralytics' definition (``yolo val``): precision, recall, mAP50, mAP50-95
    yolo: dict[str, Any] = field(default_factory=dict)
    save_dir: str | None = None  # the report folder, when one was written

    @property
    def map50_95(self) -> float:
        return float(self.metrics["AP"] or 0.0)

    @property
    def map50(self) -> float:
        return float(self.metrics["AP50"] or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coco_from_dict(gt: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = {"info": {}, **gt}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_metrics(
    gt: dict[str, Any], detections: list[dict[str, Any]], names_by_category: Mapping[int, str]
) -> tuple[dict[str, float | None], dict[str, float | None], str]:
    """Run COCOeval (bbox) on a ground-truth dict and a list of COCO detections.

    Returns:
        (metrics by STAT_NAMES, AP per class name, pycocotools' printed summary). With no detections every metric is
        0.0 (pycocotools itself cannot load an empty result list).
    """
    coco_gt = _coco_from_dict(gt)
    cat_ids = sorted(names_by_category)
    if not detections:
        metrics: dict[str, float | None] = {k: 0.0 for k in STAT_NAMES}
        return metrics, {names_by_category[c]: 0.0 for c in cat_ids}, "no detections: every metric is 0"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(detections)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.catIds = cat_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    metrics = {k: (float(v) if v >= 0 else None) for k, v in zip(STAT_NAMES, ev.stats, strict=True)}
    precision = ev.eval["precision"]  # (T, R, K, area, maxDets)
    per_class: dict[str, float | None] = {}
    for k, cat in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]
        per_class[names_by_category[cat]] = float(p[p > -1].mean()) if (p > -1).any() else None
    return metrics, per_class, buf.getvalue()


def evaluate(
    predictor: Predictor,
    spec: DataSpec,
    split: str = "val",
    *,
    imgsz: int = 640,
    batch: int = 16,
    conf: float = 0.001,
    iou: float = 0.7,
    max_det: int = 300,
    max_images: int | None = None,
    rect: bool = False,
    stride: int = 32,
    plot_dir: Path | None = None,
    progress: bool = False,
) -> EvalResult:
    """Predict every image of ``split`` (``max_images``: an evenly spaced subset of that many) and score the
    detections against the COCO ground truth, with pycocotools and with Ultralytics' definition.

    Args:
        rect: Ultralytics' rectangular validation batches (what ``yolo val`` does) instead of square letterboxes
            (what a static-shape export takes); ``stride`` is the model's largest stride.
        plot_dir: where to draw Ultralytics' PR/F1/P/R curves and confusion matrices (None: no plots).
        progress: show a progress bar (images/s) on stderr.
    """
    gt, category_map, images, gt_source = ground_truth_for_split(spec, split)
    if max_images is not None and len(images) > max_images:
        step = len(images) / max_images
        images = [images[int(i * step)] for i in range(max_images)]
        keep = {p.name for p in images}
        kept = [im for im in gt["images"] if str(im["file_name"]).rsplit("/", 1)[-1] in keep]
        ids = {int(im["id"]) for im in kept}
        gt = {**gt, "images": kept, "annotations": [a for a in gt["annotations"] if int(a["image_id"]) in ids]}
    image_ids = {str(im["file_name"]).rsplit("/", 1)[-1]: int(im["id"]) for im in gt["images"]}
    bs = min(batch, predictor.max_batch or batch)
    detections: list[dict[str, Any]] = []
    per_image: dict[int, np.ndarray] = {}
    started = time.perf_counter()
    bar = progress_bar(len(images), f"eval {predictor.name}", enabled=progress)
    for x, metas, paths in iterate_batches(images, imgsz, bs, rect=rect, stride=stride):
        raw = predictor(x)
        dets = postprocess(raw, metas, end2end=predictor.end2end, conf=conf, iou=iou, max_det=max_det, clip=False)
        for path, meta, det in zip(paths, metas, dets, strict=True):
            image_id = image_ids[path.name]
            # Ultralytics scores boxes unclipped (in the network input); COCO's are clipped to the image
            per_image[image_id] = det
            det = det.copy()
            det[:, [0, 2]] = det[:, [0, 2]].clip(0, meta.orig_w)
            det[:, [1, 3]] = det[:, [1, 3]].clip(0, meta.orig_h)
            for x1, y1, x2, y2, score, cls in det.tolist():
                detections.append(
                    {
                        "image_id": image_id,
                        "category_id": category_map[int(cls)],
                        "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
                        "score": round(score, 5),
                    }
                )
        bar.update(len(paths))
    bar.close()
    elapsed = time.perf_counter() - started
    names_by_category = {category_map[i]: n for i, n in spec.names.items()}
    metrics, per_class, summary = coco_metrics(gt, detections, names_by_category)
    LOGGER.debug("pycocotools summary (%s, %s):\n%s", predictor.name, split, summary)
    yolo = yolo_metrics(*_per_image(gt, per_image, category_map), spec.names, plot_dir=plot_dir)
    return EvalResult(
        metrics=metrics,
        per_class=per_class,
        images=len(images),
        detections=len(detections),
        images_per_second=len(images) / max(elapsed, 1e-9),
        ground_truth=gt_source,
        settings={
            "split": split,
            "imgsz": imgsz,
            "batch": bs,
            "conf": conf,
            "iou": iou,
            "max_det": max_det,
            "letterbox": "rect" if rect else "square",
            "runtime": predictor.name,
        },
        yolo=yolo,
    )


def _per_image(
    gt: dict[str, Any], detections: Mapping[int, np.ndarray], category_map: Mapping[int, int]
) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]:
    """Detections and ground truth (xyxy, class index) per image of ``gt``, in the same order."""
    index_of = {c: i for i, c in category_map.items()}
    boxes: dict[int, list[list[float]]] = {int(im["id"]): [] for im in gt["images"]}
    classes: dict[int, list[int]] = {i: [] for i in boxes}
    for a in gt["annotations"]:
        if a.get("iscrowd"):
            continue
        x, y, w, h = a["bbox"]
        boxes[int(a["image_id"])].append([x, y, x + w, y + h])
        classes[int(a["image_id"])].append(index_of[int(a["category_id"])])
    dets = [detections.get(i, np.zeros((0, 6))) for i in boxes]
    truth = [(np.array(boxes[i], dtype=np.float64).reshape(-1, 4), np.array(classes[i], dtype=np.int64)) for i in boxes]
    return dets, truth
