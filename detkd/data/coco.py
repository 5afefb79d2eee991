"""COCO ground truth: write json, convert YOLO labels with an explicit category map, match an official json."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from detkd.data.dataset import DataSpec, label_path_for, list_images, read_label_rows
from detkd.errors import InputFileError

LOGGER = logging.getLogger(__name__)


def write_coco_json(path: str | Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    """Write a minimal COCO detection json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def yolo_to_coco(image_files: Sequence[Path], names: Mapping[int, str]) -> tuple[dict[str, Any], dict[int, int]]:
    """Convert YOLO labels of ``image_files`` into a COCO ground-truth dict.

    The category map is explicit: class index i becomes category id i + 1 with the data YAML's name.

    Returns:
        (coco_dict, category_map) where category_map maps class index -> category id.
    """
    category_map = {int(i): int(i) + 1 for i in names}
    categories = [{"id": category_map[i], "name": str(n)} for i, n in sorted(names.items())]
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, img_path in enumerate(image_files, start=1):
        try:
            with Image.open(img_path) as im:
                w, h = im.size
        except Exception as e:  # PIL raises several types for unreadable files
            raise InputFileError(img_path, f"image does not decode ({e})") from e
        images.append({"id": image_id, "file_name": img_path.name, "width": w, "height": h})
        for row in read_label_rows(label_path_for(img_path), len(names)):
            cls, cx, cy, bw, bh = row
            x1, y1 = (cx - bw / 2) * w, (cy - bh / 2) * h
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_map[int(cls)],
                    "bbox": [x1, y1, bw * w, bh * h],
                    "area": bw * w * bh * h,
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


def load_coco_ground_truth(
    json_path: Path, image_files: Sequence[Path], names: Mapping[int, str]
) -> tuple[dict[str, Any], dict[int, int], list[Path]]:
    """Load an official json and match it to the dataset's classes (by name) and images (by file name).

    Returns:
        (coco_dict, category_map, images) where images are the split's files that the json covers, in json order.

    Raises:
        InputFileError: the json is unreadable, a class name has no category, or a json image is missing.
    """
    try:
        gt = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputFileError(json_path, f"COCO json does not load ({e})") from e
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise InputFileError(json_path, f"COCO json has no '{key}' list")
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
    images = []
    for im in gt["images"]:
        name = Path(im["file_name"]).name
        if name not in files:
            raise InputFileError(json_path, f"image '{name}' is in the json but not in the split's image folder")
        images.append(files[name])
    extra = len(files) - len(images)
    if extra:
        LOGGER.warning("%s: %d split images are not in the json and are not evaluated", json_path, extra)
    return gt, category_map, images


def ground_truth_for_split(spec: DataSpec, split: str) -> tuple[dict[str, Any], dict[int, int], list[Path], str]:
    """The COCO ground truth of a split: the official json when present, else converted from YOLO labels.

    Returns:
        (coco_dict, category_map, images, source) where source describes where the ground truth came from.
    """
    image_files = list_images(spec, split)
    json_path = find_coco_json(spec, split)
    if json_path is not None:
        gt, cmap, images = load_coco_ground_truth(json_path, image_files, spec.names)
        return gt, cmap, images, f"official json {json_path}"
    gt, cmap = yolo_to_coco(image_files, spec.names)
    return gt, cmap, image_files, "converted from YOLO labels (category id = class index + 1)"
