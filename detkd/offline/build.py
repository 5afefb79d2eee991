"""``detkd cache``: run a teacher once over a set of images and keep its soft boxes (:mod:`detkd.offline.cache`).

Each image is read and letterboxed exactly as Ultralytics' training pipeline reads it before augmentation (long
side resized to ``imgsz`` with linear interpolation, centred grey padding to a square), so with augmentation off the
cached soft boxes are what the live teacher would predict on the student's input. Boxes are stored in the original
image's pixels, where training augmentation starts from.

With ``pair_dir`` the teacher sees another image of the same scene (another modality): the file with the same stem
under ``pair_dir``; its boxes are scaled to the student image's size (the pair is assumed pixel-aligned).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detkd._offline import offline_call
from detkd.errors import DetkdError, InputFileError
from detkd.logs import logged
from detkd.offline.cache import (
    CACHE_FORMAT,
    CACHE_VERSION,
    MANIFEST,
    SHARD_IMAGES,
    TeacherCache,
    describe_key_change,
    image_digests,
    read_manifest,
    write_manifest,
    write_shard,
)
from detkd.progress import progress_bar
from detkd.teachers.soft import dense_field, dense_to_detections

LOGGER = logging.getLogger(__name__)
PAD_VALUE = 114
# Score cells kept per image (the strongest anchors at --conf or above). The synthetic suite's trained YOLOv8s at
# 160 px leaves 51 per image above 0.01 of its 525 anchors (~6 objects per image); 640 px has 8400 anchors.
MAX_CELLS = 2000


@dataclass
class Letterboxed:
    image: np.ndarray  # (imgsz, imgsz, 3) uint8 RGB
    gain: tuple[float, float]  # x, y resize factors
    pad: tuple[int, int]  # left, top pixels
    size: tuple[int, int]  # original width, height


def letterbox_like_training(bgr: np.ndarray, imgsz: int) -> Letterboxed:
    """Ultralytics' training read of an image before augmentation (``load_image`` then ``LetterBox``)."""
    import cv2

    h0, w0 = bgr.shape[:2]
    r = imgsz / max(h0, w0)
    img = bgr
    if r != 1:
        w, h = min(math.ceil(w0 * r), imgsz), min(math.ceil(h0 * r), imgsz)
        img = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)
    h, w = img.shape[:2]
    dw, dh = (imgsz - w) / 2, (imgsz - h) / 2
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return Letterboxed(img[..., ::-1].copy(), (w / w0, h / h0), (left, top), (w0, h0))


def read_image(path: Path) -> np.ndarray:
    from ultralytics.utils.patches import imread

    img = imread(str(path))
    if img is None:
        raise InputFileError(path, "image cannot be decoded")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img


def find_pair(image: Path, pair_dir: Path, formats: Sequence[str]) -> Path:
    """The teacher's image of the same scene: same stem under ``pair_dir`` (any image suffix)."""
    for suffix in (image.suffix, *(f".{f}" for f in formats)):
        for s in {suffix, suffix.lower(), suffix.upper()}:
            p = pair_dir / f"{image.stem}{s}"
            if p.is_file():
                return p
    raise InputFileError(image, f"has no paired image {image.stem}.* under {pair_dir} (--pair-dir)")


def cache_key(
    teacher: str,
    imgsz: int,
    names: dict[int, str],
    class_map: str | None,
    conf: float,
    max_det: int,
    iou: float,
    pair_dir: Path | None,
    max_cells: int = 0,
) -> dict[str, Any]:
    from detkd.teachers.inputs import input_files
    from detkd.utils.files import fingerprints

    return {
        "cache_version": CACHE_VERSION,
        "teacher": str(teacher),
        "teacher_files": {Path(k).name: v for k, v in fingerprints(input_files(teacher, class_map)).items()},
        "imgsz": int(imgsz),
        "names": [names[i] for i in sorted(names)],
        "conf": float(conf),
        "max_det": int(max_det),
        "max_cells": int(max_cells),
        "iou": float(iou),
        "pair_dir": str(pair_dir.resolve()) if pair_dir else None,
    }


@dataclass
class BuildResult:
    folder: Path
    images: int
    new_images: int
    boxes: int
    seconds: float
    bytes: int
    cells: int = 0

    def describe(self) -> str:
        rate = self.new_images / self.seconds if self.seconds > 0 else float("inf")
        return (
            f"{self.folder}: {self.images} images ({self.new_images} new, {rate:.1f} images/s), {self.boxes} soft "
            f"boxes, {self.cells} score cells, {self.bytes / 2**20:.2f} MiB"
        )


def build_cache(
    teacher: Any,
    teacher_spec: str,
    images: Sequence[Path],
    out: str | Path,
    *,
    imgsz: int,
    names: dict[int, str],
    class_map: str | None = None,
    conf: float = 0.01,
    max_det: int = 100,
    max_cells: int = MAX_CELLS,
    iou: float = 0.7,
    batch: int = 16,
    device: str | torch.device = "cpu",
    pair_dir: Path | None = None,
    progress: bool = True,
) -> BuildResult:
    """Cache ``teacher``'s soft boxes (and, for a dense head, its score field: up to ``max_cells`` anchors per image
    at ``conf`` or above) for ``images`` in ``out`` (created, or resumed when it holds a cache of the same key; a
    cache of another key is refused with the fields that differ)."""
    from detkd.data.dataset import image_formats

    if not images:
        raise DetkdError("detkd cache: no images to cache")
    if not 0 < conf < 1:
        raise DetkdError(f"detkd cache: --conf {conf} must be in (0, 1)")
    if max_det < 1 or batch < 1 or max_cells < 0:
        raise DetkdError("detkd cache: --max-det and --batch must be >= 1, --max-cells >= 0")
    folder = Path(out)
    key = cache_key(teacher_spec, imgsz, names, class_map, conf, max_det, iou, pair_dir, max_cells)
    head_probe = None
    if (folder / MANIFEST).is_file():
        manifest = read_manifest(folder)
        if manifest["key"] != key:
            raise InputFileError(
                folder / MANIFEST,
                f"holds a cache made differently ({describe_key_change(manifest['key'], key)}); use another --out "
                "or delete the folder",
            )
        done = set(TeacherCache(folder).entries)
    else:
        if folder.exists() and any(folder.iterdir()):
            raise InputFileError(folder, "exists and is not a teacher cache; choose an empty or new --out folder")
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "key": key,
            "names": key["names"],
            "teacher": teacher.describe(),
            "reg_max": int(teacher.reg_max),
            "class_mask": None,
            "field": None,  # set by the first batch: True for a dense head (and max_cells > 0)
            "shards": [],
        }
        done = set()
    formats = sorted(image_formats())
    digests = image_digests(images)
    todo: list[tuple[Path, str]] = []
    seen = set(done)
    for p, d in zip(images, digests, strict=True):
        if d not in seen:
            seen.add(d)
            todo.append((p, d))
    pairs = {p: find_pair(p, pair_dir, formats) for p, _ in todo} if pair_dir else {}
    module: Any = teacher
    module.to(device)
    started = time.perf_counter()
    bar = progress_bar(len(todo), f"caching {folder.name}", enabled=progress)
    reg_max = int(manifest["reg_max"])
    with ThreadPoolExecutor(max_workers=4) as pool:
        for s0 in range(0, len(todo), SHARD_IMAGES):
            chunk = todo[s0 : s0 + SHARD_IMAGES]
            per_image: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]] = []
            per_cells: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
            sizes: list[tuple[int, int]] = []
            for b0 in range(0, len(chunk), batch):
                part = chunk[b0 : b0 + batch]
                student_imgs = list(pool.map(lambda pd: read_image(pd[0]), part))
                teacher_imgs = list(pool.map(read_image, [pairs[p] for p, _ in part])) if pairs else student_imgs
                boxed = [letterbox_like_training(im, imgsz) for im in teacher_imgs]
                x = torch.from_numpy(np.stack([b.image for b in boxed])).permute(0, 3, 1, 2).float() / 255
                with torch.no_grad():
                    out_heads = teacher(x.to(device)).heads
                head = out_heads["one2many"]
                if head_probe is None:
                    head_probe = head
                    if head_probe.class_mask is not None and manifest["class_mask"] is None:
                        manifest["class_mask"] = [float(v) for v in head_probe.class_mask.cpu().tolist()]
                    if manifest["field"] is None:  # detections-only teachers' dense outputs are made from boxes
                        manifest["field"] = head.box_valid is None and max_cells > 0
                dets = dense_to_detections(head, conf=conf, max_det=max_det, iou=iou)
                fields = dense_field(head, conf=conf, max_cells=max_cells) if manifest["field"] else None
                for j, (lb, student, (boxes, probs, dist, stride)) in enumerate(
                    zip(boxed, student_imgs, dets, strict=True)
                ):
                    sh, sw = student.shape[:2]
                    fx, fy = sw / lb.size[0], sh / lb.size[1]  # teacher image -> student image (a pair)
                    pad = torch.tensor([lb.pad[0], lb.pad[1]] * 2, dtype=torch.float32)
                    gain = torch.tensor([lb.gain[0] / fx, lb.gain[1] / fy] * 2, dtype=torch.float32)
                    orig = ((boxes.cpu() - pad) / gain).clamp_min(0)
                    orig[:, [0, 2]] = orig[:, [0, 2]].clamp_max(sw)
                    orig[:, [1, 3]] = orig[:, [1, 3]].clamp_max(sh)
                    spacing = stride.cpu() / (lb.gain[0] / fx)
                    cells = fields[j] if fields else None
                    per_cells.append(_cells_in_original(cells, lb, (fx, fy), (sw, sh), reg_max, len(names)))
                    per_image.append(
                        (
                            orig.numpy(),
                            probs.cpu().numpy().astype(np.float16),
                            None if dist is None else dist.cpu().numpy().astype(np.float16),
                            spacing.numpy().astype(np.float32),
                        )
                    )
                    sizes.append((sw, sh))
                bar.update(len(part))
            counts = [len(b) for b, *_ in per_image]
            arrays: dict[str, np.ndarray] = {
                "keys": np.stack([np.frombuffer(bytes.fromhex(d), np.uint8) for _, d in chunk]),
                "sizes": np.asarray(sizes, np.int32).reshape(-1, 2),
                "offsets": np.concatenate(([0], np.cumsum(counts))).astype(np.int64),
                "boxes": np.concatenate([b for b, *_ in per_image]).astype(np.float32).reshape(-1, 4),
                "probs": np.concatenate([p for _, p, _, _ in per_image]).reshape(-1, len(names)),
                "cell_offsets": np.concatenate(([0], np.cumsum([len(c) for c, *_ in per_cells]))).astype(np.int64),
                "cells": np.concatenate([c for c, *_ in per_cells]).astype(np.float32).reshape(-1, 3),
                "cell_probs": np.concatenate([p for _, p, _ in per_cells]).astype(np.float16).reshape(-1, len(names)),
            }
            cell_box = np.concatenate([b for *_, b in per_cells]).reshape(-1, 4, reg_max)
            if reg_max > 1:
                arrays["cell_dist"] = cell_box.astype(np.float16)
            else:
                arrays["cell_ltrb"] = cell_box.reshape(-1, 4).astype(np.float32)
            if reg_max > 1:
                arrays["dist"] = np.concatenate([d for _, _, d, _ in per_image if d is not None]).reshape(
                    -1, 4, reg_max
                )
                arrays["spacing"] = np.concatenate([s for *_, s in per_image]).reshape(-1)
            name = f"shard-{len(manifest['shards']):05d}.safetensors"
            digest = write_shard(folder / name, arrays)
            manifest["shards"].append({"file": name, "images": len(chunk), "boxes": int(sum(counts)), "sha256": digest})
            write_manifest(folder, manifest)  # after the shard: a killed build resumes after its last whole shard
    bar.close()
    if not manifest["shards"]:
        write_manifest(folder, manifest)
    seconds = time.perf_counter() - started
    cache = TeacherCache(folder)
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return BuildResult(folder, len(cache), len(todo), cache.boxes_total, seconds, size, cache.cells_total)


def _cells_in_original(
    field: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None,
    lb: Letterboxed,
    pair_scale: tuple[float, float],
    size: tuple[int, int],
    reg_max: int,
    nc: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's score cells (point x, y, stride) in the student image's pixels, their class vectors and own
    boxes (in strides: frame-free); cells whose point lies in the letterbox padding (outside the image) are
    dropped."""
    if field is None or not len(field[0]):
        return np.zeros((0, 3), np.float32), np.zeros((0, nc), np.float16), np.zeros((0, 4, reg_max), np.float32)
    points, stride, probs, box = (t.cpu().float() for t in field)
    gx, gy = lb.gain[0] / pair_scale[0], lb.gain[1] / pair_scale[1]
    x = (points[:, 0] - lb.pad[0]) / gx
    y = (points[:, 1] - lb.pad[1]) / gy
    keep = (x >= 0) & (x <= size[0]) & (y >= 0) & (y <= size[1])
    cells = torch.stack((x, y, stride / gx), dim=1)[keep]
    return cells.numpy().astype(np.float32), probs[keep].numpy().astype(np.float16), box[keep].numpy()


def _listed_images(sources: Sequence[str | Path]) -> list[Path]:
    """The images of folders or image lists given on the command line (``--images``)."""
    from detkd.data.dataset import _split_files, image_formats, source_images

    formats = image_formats()
    out: list[Path] = []
    for src in sources:
        p = Path(src).expanduser().absolute()
        if not p.exists():
            raise InputFileError(p, "image folder or list not found (--images)")
        found = source_images(p, _split_files(p), formats)
        if not found:
            raise InputFileError(p, "has no images (--images)")
        out += found
    return out


@offline_call
@logged
def cache_teacher(
    teacher: str | Path,
    *,
    out: str | Path,
    data: str | Path | None = None,
    images: Sequence[str | Path] = (),
    unlabeled: Sequence[str | Path] = (),
    imgsz: int = 640,
    class_map: str | Path | None = None,
    conf: float = 0.01,
    max_det: int = 100,
    max_cells: int | None = None,
    batch: int = 16,
    device: str | int | None = None,
    pair_dir: str | Path | None = None,
    threads: int | None = None,
    progress: bool = True,
    allow_random_teacher: bool = False,
) -> BuildResult:
    """Build (or resume) a teacher cache: ``teacher`` (any family detkd distils from, seen through ``class_map``)
    over the data's train and unlabeled images and any more ``images``; classes are the data's (or, without
    ``data``, the teacher's own)."""
    from detkd.data.checks import checked_data
    from detkd.teachers import build_teacher, refuse_untrained
    from detkd.teachers.mapped import paired_classes
    from detkd.utils.device import set_cpu_threads, torch_device_name
    from detkd.utils.rng import seeded

    refuse_untrained(teacher, allow_random_teacher)  # before the image scan
    if data is None and not images and not unlabeled:
        raise DetkdError("detkd cache: give --data and/or --images (the images to cache)")
    if imgsz < 32 or imgsz % 32:
        raise DetkdError(f"detkd cache: --imgsz {imgsz} must be a multiple of 32 (the training size)")
    paths: list[Path] = []
    if data is not None:
        spec = checked_data(data, "skip", list(unlabeled) or None)
        names = dict(spec.names)
        for split in ("train", "unlabeled"):
            if split in spec.reports:
                paths += [s.image for s in spec.reports[split].samples]
    else:
        paths += _listed_images(unlabeled)
    paths += _listed_images(images)
    pair = Path(pair_dir).expanduser().absolute() if pair_dir else None
    if pair is not None and not pair.is_dir():
        raise InputFileError(pair, "paired-modality folder not found (--pair-dir)")
    kw: dict[str, Any] = {"nc": len(names), "names": names} if data is not None else {}
    with seeded(0):  # a teacher from YAML (random weights, for tests) is the one the distiller would build
        built = build_teacher(teacher, allow_random=allow_random_teacher, **kw)
    if data is not None:
        model = paired_classes(built, names, class_map, required=True)
    else:
        model, names = built, dict(built.names)
    dev = torch_device_name(device) if device not in (None, "") else ("cuda:0" if torch.cuda.is_available() else "cpu")
    if dev == "cpu":
        set_cpu_threads(threads)
    result = build_cache(
        model,
        str(teacher),
        paths,
        out,
        imgsz=imgsz,
        names=names,
        class_map=str(class_map) if class_map else None,
        conf=conf,
        max_det=max_det,
        max_cells=MAX_CELLS if max_cells is None else max_cells,
        batch=batch,
        device=dev,
        pair_dir=pair,
        progress=progress,
    )
    LOGGER.info("%s", result.describe())
    return result
