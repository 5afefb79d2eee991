"""Convert a student with Ultralytics' exporter into one target's files (never a converter of our own).

Every target is exported at a static batch of 1, NMS outside the graph (the bundle and detkd run the same NMS), into
a scratch folder, then moved to ``dest``. INT8 targets calibrate on ``calib_images`` images of the data's
``calib_split`` (train by default, so the gate on val is not measured on the calibration images).
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from detkd._offline import ensure_offline, offline_guards
from detkd.errors import DetkdError
from detkd.export.targets import Target

ensure_offline()

LOGGER = logging.getLogger(__name__)


def _calibration_fraction(data: Path, split: str, images: int) -> float:
    from detkd.data.dataset import list_images, load_data_spec

    available = len(list_images(load_data_spec(data), split))
    if available == 0:
        raise DetkdError(f"{data}: split '{split}' has no images to calibrate INT8 with")
    return min(1.0, images / available)


def convert(
    model: nn.Module,
    target: Target,
    dest: Path,
    imgsz: int,
    *,
    data: Path | None = None,
    calib_split: str = "train",
    calib_images: int = 300,
    device: str = "cpu",
    end2end: bool = False,
) -> Path:
    """Export ``model`` for ``target``; returns the model file (or folder, for OpenVINO/NCNN) inside ``dest``."""
    from ultralytics.engine.exporter import Exporter

    dest.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {
        "format": target.ultralytics_format,
        "imgsz": imgsz,
        "device": device,
        "batch": 1,
        "dynamic": False,
        "verbose": False,
        "quantize": target.quantize,
        "nms": False if end2end else None,  # Ultralytics exports the one-to-one head exactly when nms=False
    }
    if target.ultralytics_format in ("onnx", "engine"):
        overrides["simplify"] = True
    if target.calibrates:
        assert data is not None
        overrides |= {
            "data": str(data),
            "split": calib_split,
            "fraction": _calibration_fraction(data, calib_split, calib_images),
        }
    ul_logger = logging.getLogger("ultralytics")
    level = ul_logger.level
    with tempfile.TemporaryDirectory(dir=dest) as scratch:
        clone: Any = copy.deepcopy(model).float().eval()
        clone.pt_path = str(Path(scratch) / "model.pt")  # the exporter names its outputs after this path
        ul_logger.setLevel(logging.WARNING)  # its per-export banner and "Predict: yolo predict ..." hints
        try:
            with offline_guards():
                produced = Path(Exporter(overrides=overrides)(model=clone))
        except Exception as e:  # the exporter's converters raise anything; say which target and why
            raise DetkdError(f"{target.name}: Ultralytics' {target.ultralytics_format} export failed: {e}") from e
        finally:
            ul_logger.setLevel(level)
        if not produced.exists():
            raise DetkdError(f"{target.name}: the exporter reported {produced} but produced nothing there")
        out = dest / ("model" if produced.is_dir() else f"model{produced.suffix}")
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        shutil.move(str(produced), out)
    if out.is_dir():  # the runtimes find their files by suffix; keep only what the runtime loads
        for extra in out.glob("*.py"):
            extra.unlink()
    return out
