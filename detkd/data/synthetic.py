"""Synthetic detection scenes: detkd's embedded default dataset, deterministic by seed.

Six classes in three pairs that differ in finer detail (disk/ring, square/window, triangle/star), drawn at many
sizes (down to a few pixels) and rotations over textured backgrounds with clutter (distractor blobs, ellipses and
lines), occlusion between objects, noise and blur. Colours carry no class information. Small objects and the fine
details (a ring's hole, a window's thin cross) are where a larger model clearly beats a smaller one.

Output (Ultralytics layout)::

    root/images/{train,val}/*.png  root/labels/{train,val}/*.txt  root/data.yaml
    root/annotations/instances_val.json   (COCO ground truth for val)
    root/manifest.json                    (generator parameters; a matching manifest means the data is reused)

>>> import tempfile
>>> d = generate_dataset(tempfile.mkdtemp(), SceneConfig(n_train=2, n_val=1, size=64), seed=0)
>>> sorted(p.name for p in d.glob("*"))
['annotations', 'data.yaml', 'images', 'labels', 'manifest.json']
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from detkd.data.coco import write_coco_json

LOGGER = logging.getLogger(__name__)

CLASS_NAMES = ("disk", "ring", "square", "window", "triangle", "star")
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SceneConfig:
    """Parameters of the scene generator.

    Attributes:
        n_train: number of training images.
        n_val: number of validation images.
        size: square image side in pixels.
        min_objects, max_objects: objects per image (uniform).
        min_size: smallest object diameter in pixels; the largest is ``max_size_frac * size``.
        max_size_frac: largest object diameter as a fraction of the image side.
        max_distractors: clutter items per image (uniform from 0).
        min_visible: objects less visible than this fraction (occlusion, borders) are left unlabelled.
        one_class: label every object as the one class ``shape`` (an easy task that a detector learns in a few
            hundred steps on a CPU: the tests' trained teacher).
        paired: also write a second modality of the same scenes under ``root/ir`` (same stems, same labels,
            ``root/ir/data.yaml``): a thermal-like rendering where every object keeps its geometry but loses the
            first modality's appearance cues (colour, crisp edges, contrast), for cross-modal distillation.
    """

    n_train: int = 600
    n_val: int = 150
    size: int = 256
    min_objects: int = 2
    max_objects: int = 10
    min_size: float = 7.0
    max_size_frac: float = 0.4
    max_distractors: int = 8
    min_visible: float = 0.4
    one_class: bool = False
    paired: bool = False


@dataclass(frozen=True)
class SceneObject:
    cls: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels (visible extent)


def _rotated(points: np.ndarray, angle: float, center: tuple[float, float]) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return points @ rot.T + np.asarray(center)


def _poly_mask(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return mask


def _circle_mask(shape: tuple[int, int], center: tuple[float, float], r: float) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cx, cy = (round(v * 16) for v in center)
    cv2.circle(mask, (cx, cy), max(1, round(r * 16)), 1, thickness=-1, lineType=cv2.LINE_8, shift=4)
    return mask


def shape_mask(
    cls: int, shape: tuple[int, int], center: tuple[float, float], diameter: float, angle: float
) -> np.ndarray:
    """Binary mask (H, W) of one object of class ``cls``."""
    r = diameter / 2
    name = CLASS_NAMES[cls]
    if name in ("disk", "ring"):
        mask = _circle_mask(shape, center, r)
        if name == "ring":
            mask &= 1 - _circle_mask(shape, center, r * 0.55)
        return mask
    if name in ("square", "window"):
        h = r / math.sqrt(2) * 1.15  # half side; the square's diagonal ~ diameter
        square = np.array([[-h, -h], [h, -h], [h, h], [-h, h]])
        mask = _poly_mask(shape, _rotated(square, angle, center))
        if name == "window":
            w = max(0.6, h * 0.11)  # half width of the cross bars: thin, the fine detail of this class
            for bar in (np.array([[-h, -w], [h, -w], [h, w], [-h, w]]), np.array([[-w, -h], [w, -h], [w, h], [-w, h]])):
                mask &= 1 - _poly_mask(shape, _rotated(bar * 0.999, angle, center))
        return mask
    if name == "triangle":
        pts = np.array(
            [[r * math.cos(a), r * math.sin(a)] for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))]
        )
        return _poly_mask(shape, _rotated(pts, angle, center))
    # star: five points, inner radius 0.45 r
    pts = np.array(
        [
            [(r if k % 2 == 0 else 0.45 * r) * math.cos(a), (r if k % 2 == 0 else 0.45 * r) * math.sin(a)]
            for k, a in enumerate(-math.pi / 2 + k * math.pi / 5 for k in range(10))
        ]
    )
    return _poly_mask(shape, _rotated(pts, angle, center))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth colour field + mid-frequency texture, sometimes stripes or a checkerboard."""
    coarse = rng.uniform(20, 235, size=(rng.integers(2, 6), rng.integers(2, 6), 3)).astype(np.float32)
    img: np.ndarray = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    tex_n = int(rng.integers(8, 40))
    tex = rng.normal(0, rng.uniform(4, 22), size=(tex_n, tex_n, 1)).astype(np.float32)
    img += cv2.resize(tex, (size, size), interpolation=cv2.INTER_LINEAR)[..., None]
    u = rng.random()
    if u < 0.25:  # stripes
        period = rng.uniform(6, 30)
        theta = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        wave = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
        img += (wave * rng.uniform(5, 25))[..., None]
    elif u < 0.35:  # checkerboard
        cell = int(rng.integers(6, 24))
        yy, xx = np.mgrid[0:size, 0:size]
        img += (((xx // cell + yy // cell) % 2) * rng.uniform(8, 30))[..., None].astype(np.float32)
    return np.clip(img, 0, 255)


def _distractor_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A clutter item: an elongated ellipse, an irregular blob or a thick line (never one of the classes)."""
    shape = (size, size)
    kind = rng.integers(0, 3)
    cx, cy = rng.uniform(0, size, 2)
    d = math.exp(rng.uniform(math.log(5), math.log(size * 0.35)))
    mask = np.zeros(shape, np.uint8)
    if kind == 0:
        axes = (max(1, int(d / 2)), max(1, int(d / 2 / rng.uniform(2.2, 5))))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    elif kind == 1:
        n = int(rng.integers(5, 9))
        angles = np.sort(rng.uniform(0, 2 * math.pi, n))
        radii = rng.uniform(0.25, 0.5, n) * d
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        mask = _poly_mask(shape, pts)
    else:
        theta = rng.uniform(0, math.pi)
        dx, dy = math.cos(theta) * d, math.sin(theta) * d
        cv2.line(mask, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 1, int(rng.integers(1, 4)))
    return mask


def _color(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A random colour with at least a little contrast to the mean colour beneath it."""
    for _ in range(10):
        c = rng.uniform(0, 255, 3)
        if np.abs(c - under).mean() > 28:
            return c
    return 255 - under


def render_scene(
    rng: np.random.Generator, cfg: SceneConfig, layers: list[np.ndarray] | None = None
) -> tuple[np.ndarray, list[SceneObject]]:
    """Draw one scene; returns a BGR uint8 image and its labelled objects. ``layers`` (when given) receives every
    painted mask in drawing order, for :func:`render_second_modality` (the draws of ``rng`` are unchanged)."""
    size = cfg.size
    shape = (size, size)
    img = _background(rng, size)
    n_dis = int(rng.integers(0, cfg.max_distractors + 1))
    n_before = int(rng.integers(0, n_dis + 1))  # the rest are drawn over the objects (occluders)

    def paint(mask: np.ndarray) -> None:
        sel = mask.astype(bool)
        if sel.any():
            img[sel] = _color(rng, img[sel].mean(axis=0))
            if layers is not None:
                layers.append(sel)

    for _ in range(n_before):
        paint(_distractor_mask(rng, size))

    masks: list[np.ndarray] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        cls = int(rng.integers(0, len(CLASS_NAMES)))
        d = math.exp(rng.uniform(math.log(cfg.min_size), math.log(cfg.max_size_frac * size)))
        center = (float(rng.uniform(0, size)), float(rng.uniform(0, size)))
        m = shape_mask(cls, shape, center, d, float(rng.uniform(0, 2 * math.pi)))
        full = _full_area(cls, d)
        if m.sum() < 0.5 * full:  # mostly outside the image: skip without drawing
            continue
        paint(m)
        masks.append(m)
        classes.append(cls)

    occluders = [_distractor_mask(rng, size) for _ in range(n_dis - n_before)]
    for m in occluders:
        paint(m)

    objects: list[SceneObject] = []
    covered = np.zeros(shape, np.uint8)
    for occ in occluders:
        covered |= occ
    for i in range(len(masks) - 1, -1, -1):  # later objects occlude earlier ones
        visible = masks[i] & (1 - covered)
        covered |= masks[i]
        if visible.sum() < cfg.min_visible * masks[i].sum():
            continue
        ys, xs = np.nonzero(visible)
        x1, y1, x2, y2 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
        if x2 - x1 < 3 or y2 - y1 < 3:
            continue
        objects.append(SceneObject(classes[i], (x1, y1, x2, y2)))
    objects.reverse()

    sigma = rng.uniform(0, 14)
    img = img + rng.normal(0, sigma, img.shape)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.4, 0.9))
    return np.clip(img, 0, 255).astype(np.uint8), objects


def render_second_modality(rng: np.random.Generator, layers: list[np.ndarray], size: int) -> np.ndarray:
    """The same scene as a thermal-like image: every painted mask (objects and clutter, same order, so the same
    occlusions) at a low, random-sign intensity contrast over a smooth grey field, then strong blur and noise.
    Geometry is kept exactly; colour, crisp edges and strong contrast (the cues of the first modality) are not."""
    coarse = rng.uniform(60, 190, size=(int(rng.integers(2, 4)), int(rng.integers(2, 4)), 1)).astype(np.float32)
    img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    for sel in layers:
        base = float(img[sel].mean())
        img[sel] = base + float(rng.choice([-1.0, 1.0])) * float(rng.uniform(14, 34))
    blurred = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.8, 1.4)))
    noisy = blurred + rng.normal(0, rng.uniform(4, 10), blurred.shape)
    gray = np.clip(noisy, 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def _full_area(cls: int, d: float) -> float:
    """Approximate area of an unoccluded object (pixels), to detect objects cut by the border."""
    r = d / 2
    name = CLASS_NAMES[cls]
    area = {"disk": math.pi * r * r, "ring": math.pi * r * r * (1 - 0.55**2), "triangle": 1.299 * r * r}.get(name)
    if area is None:
        h = r / math.sqrt(2) * 1.15
        area = 4 * h * h * (0.7 if name == "window" else 1.0) if name in ("square", "window") else 1.12 * r * r
    return max(area, 4.0)


def _yolo_lines(objects: list[SceneObject], size: int, one_class: bool = False) -> str:
    lines = []
    for o in objects:
        x1, y1, x2, y2 = o.box
        cx, cy, w, h = (x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size
        lines.append(f"{0 if one_class else o.cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def generate_dataset(root: str | Path, cfg: SceneConfig | None = None, *, seed: int = 0, force: bool = False) -> Path:
    """Write a synthetic dataset under ``root`` (reused when a manifest with the same parameters exists).

    Each image is drawn from its own generator seeded by (seed, split, index), so the data does not depend on
    generation order and a given seed always gives the same bytes.

    Returns:
        The dataset root; ``root / "data.yaml"`` is the Ultralytics data file.
    """
    cfg = cfg or SceneConfig()
    root = Path(root).resolve()
    manifest = {"generator": "detkd.synthetic", "version": GENERATOR_VERSION, "seed": seed, "config": asdict(cfg)}
    mpath = root / "manifest.json"
    if not force and mpath.is_file() and json.loads(mpath.read_text()) == manifest and (root / "data.yaml").is_file():
        LOGGER.info("Reusing synthetic dataset at %s", root)
        return root
    if root.exists():
        for sub in ("images", "labels", "annotations"):
            shutil.rmtree(root / sub, ignore_errors=True)
        shutil.rmtree(root / "ir", ignore_errors=True)
    coco_images: list[dict] = []
    coco_anns: list[dict] = []
    second = root / "ir"
    for split, code, n in (("train", 0, cfg.n_train), ("val", 1, cfg.n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        if cfg.paired:
            (second / "images" / split).mkdir(parents=True, exist_ok=True)
            (second / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed, code, i])
            layers: list[np.ndarray] | None = [] if cfg.paired else None
            img, objects = render_scene(rng, cfg, layers)
            name = f"{split}_{i:05d}"
            cv2.imwrite(str(root / "images" / split / f"{name}.png"), img)
            lines = _yolo_lines(objects, cfg.size, cfg.one_class)
            (root / "labels" / split / f"{name}.txt").write_text(lines)
            if layers is not None:  # its own generator: the first modality's bytes do not depend on it
                ir = render_second_modality(np.random.default_rng([seed, code, i, 1]), layers, cfg.size)
                cv2.imwrite(str(second / "images" / split / f"{name}.png"), ir)
                (second / "labels" / split / f"{name}.txt").write_text(lines)
            if split == "val":
                image_id = i + 1
                coco_images.append({"id": image_id, "file_name": f"{name}.png", "width": cfg.size, "height": cfg.size})
                for o in objects:
                    x1, y1, x2, y2 = o.box
                    coco_anns.append(
                        {
                            "id": len(coco_anns) + 1,
                            "image_id": image_id,
                            "category_id": 1 if cfg.one_class else o.cls + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": (x2 - x1) * (y2 - y1),
                            "iscrowd": 0,
                        }
                    )
    names = ("shape",) if cfg.one_class else CLASS_NAMES
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    write_coco_json(root / "annotations" / "instances_val.json", coco_images, coco_anns, categories)
    data = {
        "path": str(root),
        "train": "images/train",
        "val": "images/val",
        "nc": len(names),
        "names": dict(enumerate(names)),
    }
    (root / "data.yaml").write_text(
        "# detkd synthetic scenes (generated; see manifest.json)\n" + yaml.safe_dump(data, sort_keys=False)
    )
    if cfg.paired:
        write_coco_json(second / "annotations" / "instances_val.json", coco_images, coco_anns, categories)
        (second / "data.yaml").write_text(
            "# detkd synthetic scenes, second modality (thermal-like; same scenes and labels as ../data.yaml)\n"
            + yaml.safe_dump({**data, "path": str(second)}, sort_keys=False)
        )
    mpath.write_text(json.dumps(manifest, indent=2))
    LOGGER.info("Wrote synthetic dataset (%d train, %d val) to %s", cfg.n_train, cfg.n_val, root)
    return root
