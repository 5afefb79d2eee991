"""COCO ground truth: write json, convert YOLO labels with an explicit category map, match an official json."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detkd.data.checks import Sample, split_report
from detkd.data.dataset import DataSpec
from detkd.errors import InputFileError

LOGGER = logging.getLogger(__name__)


def write_coco_json(path: str | Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    """Write a minimal COCO detection json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def yolo_to_coco(samples: Sequence[Sample], names: Mapping[int, str]) -> tuple[dict[str, Any], dict[int, int]]:
    """Convert the checked YOLO labels of ``samples`` into a COCO ground-truth dict.

    The category map is explicit: class index i becomes category id i + 1 with the data YAML's name.

    Returns:
        (coco_dict, category_map) where category_map maps class index -> category id.
    """
    category_map = {int(i): int(i) + 1 for i in names}
    categories = [{"id": category_map[i], "name": str(n)} for i, n in sorted(names.items())]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, sample in enumerate(samples, start=1):
        w, h = sample.size
        images.append({"id": image_id, "file_name": sample.image.name, "width": w, "height": h})
        for cls, cx, cy, bw, bh in sample.rows:
            x1, y1 = max(cx - bw / 2, 0.0) * w, max(cy - bh / 2, 0.0) * h
            x2, y2 = min(cx + bw / 2, 1.0) * w, min(cy + bh / 2, 1.0) * h
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_map[int(cls)],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories}, category_map


def find_coco_json(spec: DataSpec, split: str) -> Path | None:
    """The official json of a split, when the dataset ships one as ``annotations/instances_<split>.json``.

    ``<split>`` is tried both as the split name (``val``) and as the image folder's name (``val2017``).
    """
    candidates = [spec.root / "annotations" / f"instances_{split}.json"]
    for src in spec.split_paths(split):
        candidates.append(spec.root / "annotations" / f"instances_{src.name}.json")
    return next((c for c in candidates if c.is_file()), None)


def _check_json(json_path: Path, gt: Any) -> None:
    """The json's own consistency: its lists exist and every annotation names a listed image and category."""
    if not isinstance(gt, dict):
        raise InputFileError(json_path, "a COCO json must be an object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise InputFileError(json_path, f"COCO json has no '{key}' list")
    image_ids = {im.get("id") for im in gt["images"]}
    category_ids = {c.get("id") for c in gt["categories"]}
    for a in gt["annotations"]:
        if a.get("category_id") not in category_ids:
            raise InputFileError(
                json_path,
                f"annotation {a.get('id')} has category_id {a.get('category_id')}, which is not among the json's "
                f"categories {sorted(category_ids, key=str)}",
            )
        if a.get("image_id") not in image_ids:
            raise InputFileError(json_path, f"annotation {a.get('id')} refers to image_id {a.get('image_id')}, "
                                            "which is not among the json's images")  # fmt: skip


def load_coco_ground_truth(
    json_path: Path, image_files: Sequence[Path], names: Mapping[int, str], skipped: Sequence[Path] = ()
) -> tuple[dict[str, Any], dict[int, int], list[Path]]:
    """Load an official json and match it to the dataset's classes (by name) and images (by file name).

    ``skipped`` are split images the sample check left out (they do not decode): they and their annotations are
    dropped from the ground truth with a warning instead of being an error.

    Returns:
        (coco_dict, category_map, images) where images are the split's files that the json covers, in json order.

    Raises:
        InputFileError: the json is unreadable or inconsistent, a class name has no category, or a json image is
            missing from the split.
    """
    try:
        gt = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputFileError(json_path, f"COCO json does not load ({e})") from e
    _check_json(json_path, gt)
    by_name = {str(c["name"]).strip().lower(): int(c["id"]) for c in gt["categories"]}
    missing = [n for n in names.values() if str(n).strip().lower() not in by_name]
    if missing:
        raise InputFileError(
            json_path,
            f"category names do not match the data YAML: {missing} not among {sorted(by_name)}; "
            "rename them or evaluate without this json",
        )
    category_map = {int(i): by_name[str(n).strip().lower()] for i, n in names.items()}
    files = {p.name: p for p in image_files}
    left_out = {p.name for p in skipped}
    images, kept = [], []
    for im in gt["images"]:
        name = Path(im["file_name"]).name
        if name in left_out:
            continue
        if name not in files:
            raise InputFileError(json_path, f"image '{name}' is in the json but not in the split's image folder")
        images.append(files[name])
        kept.append(im)
    if len(kept) < len(gt["images"]):
        ids = {im["id"] for im in kept}
        LOGGER.warning(
            "%s: %d images the sample check skipped are not evaluated", json_path, len(gt["images"]) - len(kept)
        )
        gt = {**gt, "images": kept, "annotations": [a for a in gt["annotations"] if a["image_id"] in ids]}
    extra = len(files) - len(images)
    if extra:
        LOGGER.warning("%s: %d split images are not in the json and are not evaluated", json_path, extra)
    return gt, category_map, images


def ground_truth_for_split(spec: DataSpec, split: str) -> tuple[dict[str, Any], dict[int, int], list[Path], str]:
    """The COCO ground truth of a split's usable images: the official json when present, else their YOLO labels.

    Returns:
        (coco_dict, category_map, images, source) where source describes where the ground truth came from.
    """
    report = split_report(spec, split)
    json_path = find_coco_json(spec, split)
    if json_path is not None:
        usable, skipped = [s.image for s in report.samples], [k.image for k in report.skipped]
        gt, cmap, images = load_coco_ground_truth(json_path, usable, spec.names, skipped)
        return gt, cmap, images, f"official json {json_path}"
    gt, cmap = yolo_to_coco(report.samples, spec.names)
    return gt, cmap, [s.image for s in report.samples], "converted from YOLO labels (category id = class index + 1)"
