"""The image lists a run trains on: each checked split written as a list of its usable samples, repaired ones as
links (or restored copies) with their cleaned labels, the user's files never modified."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from detkd.data.checks import Sample, SplitReport


def label_path_for(image: Path) -> Path:
    """Ultralytics convention: the last ``/images/`` folder becomes ``/labels/`` and the suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def reencode_jpeg(src: Path, dst: Path | None) -> None:
    """Restore a JPEG that lacks its end marker: its bytes with the marker appended, checked to decode with OpenCV
    as Ultralytics reads it, written to ``dst`` (None: only check). Lossless; the original is not touched."""
    import cv2

    data = src.read_bytes() + b"\xff\xd9"
    if cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is None:
        raise OSError("not decodable even with its end marker restored")
    if dst is not None:
        dst.write_bytes(data)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        dst.symlink_to(src.absolute())
    except OSError:  # no symlinks (some Windows set-ups): a hard link, then a copy
        try:
            os.link(src, dst)
        except OSError:
            dst.write_bytes(src.read_bytes())


def _repaired_path(folder: Path, split: str, index: int, sample: Sample) -> Path:
    return folder / "repaired" / split / "images" / f"{index:06d}_{sample.image.name}"


def plan_split_list(report: SplitReport, folder: Path) -> None:
    """Record on each sample the path the run's image list names for it (see :func:`write_split_list`); every rank
    of a distributed run plans, the one that writes the files plans the same."""
    for i, s in enumerate(report.samples):
        # not resolve(): a linked image keeps its own labels folder
        s.listed = _repaired_path(folder, report.split, i, s).absolute() if s.repairs else s.image.absolute()


def write_split_list(report: SplitReport, folder: Path) -> Path:
    """Write the usable images of a split as the image list the run trains on (repaired samples from
    ``folder/repaired``).

    Every checked split becomes a list, so Ultralytics reads exactly the images detkd checked (a folder would be
    globbed again by Ultralytics' own rules). The user's files are never modified: a repaired sample becomes a link
    to its image (or a restored copy) with the cleaned label beside it, where Ultralytics looks for labels.
    """
    plan_split_list(report, folder)
    for s in report.samples:
        if not s.repairs:
            continue
        image = s.train_path
        image.parent.mkdir(parents=True, exist_ok=True)
        if s.reencode:
            reencode_jpeg(s.image, image)
        else:
            _link_or_copy(s.image, image)
        label = label_path_for(image)
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(f"{c} {x:.8g} {y:.8g} {w:.8g} {h:.8g}\n" for c, x, y, w, h in s.rows))
    out = folder / f"{report.split}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{s.train_path}\n" for s in report.samples))
    return out
