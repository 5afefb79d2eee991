"""Per-sample checks of a split: what is unusable is skipped (or fails the run), what can be repaired is repaired.

Before anything trains, every image header and every label row of train and val is read once. Each sample ends in
one of three states:

* **usable**: used as is;
* **repaired**: usable after a repair detkd makes in the run folder, never in the user's files (duplicate label rows
  and zero-size boxes dropped; a JPEG without its end marker restored). The run's image list then points at a
  link to the original image with the cleaned label beside it (or at a restored copy);
* **skipped**: an image that does not decode, is empty, too small or of a type Ultralytics does not read, or a label
  file with a malformed row (wrong column count, a non-number, a class id outside ``0..nc-1``, coordinates outside
  [0, 1]). The whole image is left out: a half-read label would teach the detector that its objects are background.

Images that decode but are not 8-bit RGB (grayscale, 16-bit, 4-channel, palette) are read by Ultralytics as 3-channel
8-bit and are counted; 16-bit images whose values use little of their range are warned about, since Ultralytics
keeps their high byte only. Label files without an image and image-like files of unsupported types are counted and
reported. With ``bad_samples="fail"`` any skipped sample stops the run before training instead.
"""

from __future__ import annotations

import logging
import mimetypes
import os
from collections import Counter
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from detkd.data.dataset import (
    DataSpec,
    Row,
    add_unlabeled,
    image_formats,
    iter_split_sources,
    load_data_spec,
    source_images,
)
from detkd.data.split_lists import label_path_for, reencode_jpeg
from detkd.errors import ConfigError, InputFileError

LOGGER = logging.getLogger(__name__)

BAD_SAMPLE_POLICIES = ("skip", "fail")
MIN_SIDE = 10  # Ultralytics refuses images with a side under 10 px
COORD_TOLERANCE = 0.01  # Ultralytics accepts coordinates up to 1% outside [0, 1]
CHECK_THREADS = 8  # samples checked in parallel (reading headers is mostly waiting on the disk)
DIM_16BIT = 4096  # a 16-bit image whose maximum is below this reads as nearly black once its low byte is dropped
_MODE_KINDS = {
    "L": "grayscale",
    "1": "grayscale",
    "LA": "grayscale",
    "I;16": "16-bit",
    "I;16B": "16-bit",
    "I;16L": "16-bit",
    "I": "32-bit integer",
    "F": "32-bit float",
    "RGBA": "4-channel",
    "CMYK": "4-channel",
    "P": "palette",
}


@dataclass
class Sample:
    """One usable image with its (cleaned) label rows."""

    image: Path
    rows: list[Row]
    size: tuple[int, int]  # (width, height)
    repairs: list[str] = field(default_factory=list)
    reencode: bool = False  # the image itself needs a restored copy (JPEG without its end marker)
    polygons: int = 0  # label rows that were polygons, used as their bounding boxes
    listed: Path | None = None  # the path the run's image list names (a link, for a repaired sample)

    @property
    def train_path(self) -> Path:
        """The path Ultralytics reads this sample from (see :func:`write_split_list`)."""
        return self.listed if self.listed is not None else self.image.absolute()


@dataclass(frozen=True)
class Skipped:
    """An unusable sample: its image, where the problem is (the image, or ``label:line``) and what it is."""

    image: Path
    where: str
    problem: str


@dataclass
class SplitReport:
    """What the check of one split found; ``samples`` are the usable ones."""

    split: str
    samples: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)  # image kinds read with a conversion
    orphan_labels: list[Path] = field(default_factory=list)
    unsupported: list[Path] = field(default_factory=list)  # image or video files of types Ultralytics does not read

    @property
    def images(self) -> int:
        return len(self.samples)

    @property
    def boxes(self) -> int:
        return sum(len(s.rows) for s in self.samples)

    @property
    def background(self) -> int:
        return sum(not s.rows for s in self.samples)

    @property
    def repaired(self) -> list[Sample]:
        return [s for s in self.samples if s.repairs]

    @property
    def polygons(self) -> int:
        return sum(s.polygons for s in self.samples)

    @property
    def changed(self) -> bool:
        """True when the split the run trains on differs from the user's file list."""
        return bool(self.skipped or self.repaired)

    def summary(self) -> str:
        parts = [f"{self.images} images", f"{self.boxes} boxes", f"{self.background} background (no labels)"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped")
        if self.repaired:
            parts.append(f"{len(self.repaired)} repaired")
        if self.polygons:
            parts.append(f"{self.polygons} polygon rows used as their bounding boxes")
        parts += [f"{n} {kind} read as 3-channel 8-bit" for kind, n in sorted(self.kinds.items())]
        if self.orphan_labels:
            parts.append(f"{len(self.orphan_labels)} label files without an image (ignored)")
        if self.unsupported:
            parts.append(f"{len(self.unsupported)} files of unsupported image/video types (ignored)")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "images": self.images,
            "boxes": self.boxes,
            "background": self.background,
            "polygon_rows_as_boxes": self.polygons,
            "skipped": [{"image": str(k.image), "where": k.where, "problem": k.problem} for k in self.skipped],
            "repaired": [{"file": str(s.image), "repairs": s.repairs} for s in self.repaired],
            "converted": dict(self.kinds),
            "orphan_labels": [str(p) for p in self.orphan_labels],
            "unsupported": [str(p) for p in self.unsupported],
        }


@dataclass
class LabelCheck:
    """The rows of a label file, or why the file is unusable; ``repairs`` lists rows that were dropped."""

    rows: list[Row]
    error: str | None = None  # why the file is unusable
    where: str = ""  # file:line of the error
    repairs: list[str] = field(default_factory=list)
    polygons: int = 0  # rows that were polygons (kept as their bounding boxes)


def _parse_row(fields: list[str], nc: int) -> tuple[Row | None, str | None]:
    """One label row as (row, None), (None, why it is malformed) or (None, None) for a zero-size box."""
    if len(fields) < 5 or (len(fields) > 5 and len(fields) % 2 == 0):
        return None, f"expected 'class cx cy w h' (5 columns) or a polygon, got {len(fields)} columns"
    try:
        values = [float(x) for x in fields]
    except ValueError as e:
        return None, f"non-numeric value ({e})"
    cls = values[0]
    if not np.isfinite(values).all():
        return None, "non-finite value"
    if cls != int(cls) or not 0 <= cls < nc:
        return None, f"class id {fields[0]} is outside 0..{nc - 1}"
    coords = values[1:]
    if any(not -COORD_TOLERANCE <= v <= 1 + COORD_TOLERANCE for v in coords):
        return None, "coordinates must be normalised to [0, 1]"
    if len(coords) == 4:
        cx, cy, w, h = coords
    else:  # polygon x1 y1 x2 y2 ...
        xs, ys = coords[0::2], coords[1::2]
        cx, cy, w, h = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys)
    if w <= 0 or h <= 0:
        return None, None
    return (int(cls), cx, cy, w, h), None


def check_label_file(label: Path, nc: int) -> LabelCheck:
    """Parse a YOLO label file; a missing file is an image without objects.

    Malformed rows make the file unusable (``error`` names ``file:line``); zero-size boxes and exact duplicate rows
    are dropped and listed in ``repairs``; polygons become their bounding boxes.
    """
    if not label.exists():
        return LabelCheck([])
    if not label.is_file():
        return LabelCheck([], error="label path is not a file (a folder or a device)", where=str(label))
    try:
        text = label.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        return LabelCheck([], error=f"label file does not read as text ({e})", where=str(label))
    rows: list[Row] = []
    seen: set[tuple[str, ...]] = set()
    check = LabelCheck(rows)
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        row, error = _parse_row(fields, nc)
        if error:
            return LabelCheck([], error=error, where=f"{label}:{lineno}")
        if row is None:
            check.repairs.append(f"line {lineno}: zero-size box dropped")
        elif tuple(fields) in seen:
            check.repairs.append(f"line {lineno}: duplicate row dropped")
        else:
            seen.add(tuple(fields))
            rows.append(row)
            check.polygons += len(fields) > 5
    return check


@dataclass
class ImageCheck:
    """Whether an image is usable, its size, and how Ultralytics will read it."""

    error: str | None = None
    size: tuple[int, int] = (0, 0)
    kind: str | None = None  # grayscale, 16-bit, ... (None: 8-bit RGB)
    truncated_jpeg: bool = False
    warning: str | None = None


def _pil_open(path: Path) -> Image.Image:
    """PIL's own ``Image.open``: Ultralytics replaces it with one that pip-installs a HEIC plugin on any file PIL
    cannot identify, which must not happen while checking a user's (possibly broken) files."""
    from ultralytics.utils import patches

    return getattr(patches, "_image_open", Image.open)(path)


def _heic_plugin() -> str | None:
    """None once a HEIC opener is registered, else how to get one."""
    try:
        from pi_heif import register_heif_opener
    except ImportError:
        return "HEIC images need the pi-heif package (pip install pi-heif)"
    register_heif_opener()
    return None


def _decode_error(e: Exception) -> str:
    return f"image does not decode ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'})"


def check_image_file(path: Path, formats: AbstractSet[str] | None = None) -> ImageCheck:
    """Read an image's header (and, for 16-bit images, its pixels) without changing the file."""
    formats = formats if formats is not None else image_formats()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in formats:
        return ImageCheck(f"'{path.suffix}' is not an image type Ultralytics reads ({', '.join(sorted(formats))})")
    if suffix in ("heic", "heif") and (missing := _heic_plugin()):
        return ImageCheck(missing)
    try:
        if path.stat().st_size == 0:
            return ImageCheck("image file is empty")
        with _pil_open(path) as im:
            im.verify()
        with _pil_open(path) as im:
            fmt, mode, (w, h) = (im.format or "").lower(), im.mode, im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientation that swaps width and height
                w, h = h, w
            pixels = np.asarray(im) if mode.startswith("I;16") else None
    except Exception as e:  # PIL raises several types for undecodable files
        return ImageCheck(_decode_error(e))
    if fmt not in formats | {"jpeg2000"}:
        return ImageCheck(f"image format '{fmt}' is not one Ultralytics reads")
    if min(w, h) < MIN_SIDE:
        return ImageCheck(f"image is {w}x{h}; Ultralytics needs at least {MIN_SIDE} px per side")
    check = ImageCheck(size=(w, h), kind=_MODE_KINDS.get(mode))
    if fmt == "jpeg":
        with path.open("rb") as f:
            f.seek(-2, os.SEEK_END)
            check.truncated_jpeg = f.read() != b"\xff\xd9"
        if check.truncated_jpeg:
            try:
                reencode_jpeg(path, None)
            except Exception as e:  # PIL raises several types for undecodable files
                return ImageCheck(_decode_error(e))
    if pixels is not None and int(pixels.max()) < DIM_16BIT:
        check.warning = (
            f"16-bit image with values up to {int(pixels.max())} of 65535: Ultralytics keeps the high byte, so it "
            "reads as nearly black; rescale it to 8-bit with a suitable window before training"
        )
    return check


def _unsupported(path: Path, formats: set[str]) -> bool:
    if path.suffix.lower().lstrip(".") in formats:
        return False
    kind = mimetypes.guess_type(path.name)[0] or ""
    return kind.startswith(("image/", "video/"))


def _orphans(image_dir: Path, label_files: set[Path]) -> list[Path]:
    label_dir = label_path_for(image_dir / "x.jpg").parent
    if label_dir == image_dir or not label_dir.is_dir():
        return []
    return sorted(p for p in label_dir.rglob("*.txt") if p not in label_files and p.name != "classes.txt")


def _check_sample(
    img: Path, formats: AbstractSet[str], nc: int, labels: bool = True
) -> tuple[Sample | Skipped, ImageCheck]:
    """One image and its label (``labels=False``: an unlabeled image, its label file if any not read): the usable
    sample, or why it is skipped."""
    try:
        found = img.is_file()
    except OSError as e:  # a name too long for the filesystem, a folder that cannot be searched
        return Skipped(img, str(img)[:300], f"image path cannot be read ({e.strerror or e})"), ImageCheck()
    if not found:
        return Skipped(img, str(img), "image file not found"), ImageCheck()
    image = check_image_file(img, formats)
    if image.error:
        return Skipped(img, str(img), image.error), image
    if not labels:
        sample = Sample(img, [], image.size)
        if image.truncated_jpeg:
            sample.reencode = True
            sample.repairs.append("JPEG without its end marker: a copy with the marker restored is used")
        return sample, image
    label = check_label_file(label_path_for(img), nc)
    if label.error:
        return Skipped(img, label.where, label.error), image
    sample = Sample(img, label.rows, image.size, repairs=list(label.repairs), polygons=label.polygons)
    if image.truncated_jpeg:
        sample.reencode = True
        sample.repairs.append("JPEG without its end marker: a copy with the marker restored is used (file unchanged)")
    return sample, image


def scan_split(spec: DataSpec, split: str) -> SplitReport:
    """Check every sample of ``split``; raises only for problems of the split itself (no images at all)."""
    formats = image_formats()
    report = SplitReport(split, samples=[])
    candidates: list[Path] = []
    for src, files in iter_split_sources(spec, split):
        images = source_images(src, files, formats)
        if src.is_dir():
            report.unsupported += [p for p in files if _unsupported(p, formats)]
            if split != UNLABELED:
                report.orphan_labels += _orphans(src, {label_path_for(p) for p in images})
        if not images and split == UNLABELED:
            raise InputFileError(src, "unlabeled image source has no images")
        candidates += images
    if not candidates:
        raise InputFileError(spec.yaml_path, f"split '{split}' has no images")
    labels = split != UNLABELED
    with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:  # file reads and decoding release the GIL
        checked = pool.map(lambda img: _check_sample(img, formats, spec.nc, labels), candidates)
        for img, (result, image) in zip(candidates, checked, strict=True):
            if isinstance(result, Skipped):
                report.skipped.append(result)
                continue
            if image.kind:
                report.kinds[image.kind] += 1
            if image.warning:
                LOGGER.warning("%s: %s", img, image.warning)
            report.samples.append(result)
    return report


def check_policy(bad_samples: str) -> str:
    if bad_samples not in BAD_SAMPLE_POLICIES:
        raise ConfigError(f"bad_samples '{bad_samples}': valid: {', '.join(BAD_SAMPLE_POLICIES)}")
    return bad_samples


def validate_split(spec: DataSpec, split: str, *, bad_samples: str = "skip") -> SplitReport:
    """Check ``split``, log one warning per skipped or repaired file and a summary, and apply the policy.

    Raises:
        InputFileError: ``bad_samples="fail"`` and a sample is unusable, or no usable image is left.
    """
    check_policy(bad_samples)
    report = scan_split(spec, split)
    if report.skipped and bad_samples == "fail":
        first = report.skipped[0]
        more = f" (and {len(report.skipped) - 1} more unusable samples)" if len(report.skipped) > 1 else ""
        raise InputFileError(first.where, f"{first.problem}{more}; --bad-samples skip leaves unusable samples out")
    for k in report.skipped:
        LOGGER.warning("%s: %s: skipped", k.where, k.problem)
    for s in report.repaired:
        LOGGER.warning("repaired: %s: %s", label_path_for(s.image) if not s.reencode else s.image, "; ".join(s.repairs))
    if report.orphan_labels:
        examples = ", ".join(str(p) for p in report.orphan_labels[:3])
        LOGGER.warning("%d label files have no image and are ignored (e.g. %s)", len(report.orphan_labels), examples)
    if report.unsupported:
        types = ", ".join(sorted({p.suffix.lower() for p in report.unsupported}))
        LOGGER.warning("%d files of types Ultralytics does not read (%s) are ignored", len(report.unsupported), types)
    if not report.samples:
        raise InputFileError(spec.yaml_path, f"split '{split}' has no usable image ({len(report.skipped)} skipped)")
    LOGGER.info("data %s: %s", split, report.summary())
    return report


UNLABELED = "unlabeled"  # the split of images without labels (``unlabeled:`` in a data YAML, ``--unlabeled``)


def split_report(spec: DataSpec, split: str, bad_samples: str = "skip") -> SplitReport:
    """The check of ``split``, run once per spec (a split checked already is not checked again)."""
    if split not in spec.reports:
        spec.reports[split] = validate_split(spec, split, bad_samples=bad_samples)
    return spec.reports[split]


def checked_data(
    data: str | Path | DataSpec, bad_samples: str = "skip", unlabeled: list[str | Path] | None = None
) -> DataSpec:
    """The data spec with every sample of train and val (and unlabeled images, from the YAML's ``unlabeled`` key
    and ``unlabeled``) checked (once: a checked spec is passed through).

    ``bad_samples``: ``skip`` leaves unusable samples out with one warning each, ``fail`` stops on the first.
    """
    check_policy(bad_samples)
    spec = data if isinstance(data, DataSpec) else load_data_spec(data)
    if unlabeled:
        spec.reports.pop(UNLABELED, None)
        add_unlabeled(spec, unlabeled)
    for split in ("train", "val", UNLABELED):
        if split in spec.splits:
            split_report(spec, split, bad_samples)
    return spec
