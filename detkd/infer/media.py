"""Media for the bundle script: the frames of an image, a folder or a video, and boxes drawn on them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".avi", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".webm"}


def frames(source: Path) -> Iterator[tuple[str, int, np.ndarray]]:
    """(name, frame index, BGR image) for an image, every image of a folder, or every frame of a video."""
    if source.is_dir():
        for p in sorted(q for q in source.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES):
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                print(f"warning: {p}: image does not decode, skipped", file=sys.stderr)
                continue
            yield str(p), 0, img
    elif source.suffix.lower() in VIDEO_SUFFIXES:
        cap = cv2.VideoCapture(str(source))
        if not cap.isOpened():
            raise OSError(f"{source}: video does not open")
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            yield str(source), i, frame
            i += 1
        cap.release()
    else:
        img = cv2.imread(str(source), cv2.IMREAD_COLOR)
        if img is None:
            raise OSError(f"{source}: not found or does not decode as an image")
        yield str(source), 0, img


def draw(img: np.ndarray, dets: np.ndarray, labels: list[str]) -> np.ndarray:
    out = img.copy()
    for x1, y1, x2, y2, score, cls in dets.tolist():
        color = tuple(int(c) for c in np.random.default_rng(int(cls)).integers(64, 256, 3))
        cv2.rectangle(out, (round(x1), round(y1)), (round(x2), round(y2)), color, 2)
        text = f"{labels[int(cls)] if int(cls) < len(labels) else int(cls)} {score:.2f}"
        cv2.putText(out, text, (round(x1), max(round(y1) - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1)
    return out
