"""Convert a student with Ultralytics' exporter into one target's files (never a converter of our own).

Every target is exported at a static batch of 1, NMS outside the graph (the bundle and detkd run the same NMS), into
a scratch folder, then moved to ``dest``. INT8 targets calibrate on ``calib_images`` images of the data's
``calib_split`` (train by default, so the gate on val is not measured on the calibration images).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from detkd._offline import offline_guards
from detkd.data.checked_dataset import checked_labels
from detkd.errors import DetkdError
from detkd.export.targets import Target

LOGGER = logging.getLogger(__name__)


def _calibration(spec: Any, split: str, images: int, scratch: Path) -> tuple[Path, float, Any]:
    """The data YAML Ultralytics' exporter calibrates on (detkd's resolved copy: absolute paths, image lists, no
    ``download`` key, so the exporter never resolves or downloads anything itself), the fraction of ``split`` that
    gives ``images`` images, and that split's checked samples (their labels feed the calibration dataset)."""
    from detkd.data.checks import split_report

    report = split_report(spec, split)
    if not report.samples:
        raise DetkdError(f"{spec.yaml_path}: split '{split}' has no images to calibrate INT8 with")
    path = spec.write_resolved(scratch / "data.yaml")
    return path, min(1.0, images / len(report.samples)), report.samples


def convert(
    model: nn.Module,
    target: Target,
    dest: Path,
    imgsz: int,
    *,
    data: Any = None,
    calib_split: str = "train",
    calib_images: int = 300,
    device: str = "cpu",
    end2end: bool = False,
) -> Path:
    """Export ``model`` for ``target``; returns the model file (or folder, for OpenVINO/NCNN) inside ``dest``.
    ``data``: the checked :class:`~detkd.data.dataset.DataSpec` INT8 targets calibrate on."""
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
    ul_logger = logging.getLogger("ultralytics")
    level = ul_logger.level
    with tempfile.TemporaryDirectory(dir=dest) as scratch:
        labels: Any = contextlib.nullcontext()
        if target.calibrates:
            assert data is not None
            data_yaml, fraction, samples = _calibration(data, calib_split, calib_images, Path(scratch) / "calib")
            overrides |= {"data": str(data_yaml), "split": calib_split, "fraction": fraction}
            labels = checked_labels(samples)  # no label cache read or written beside the user's labels
        clone: Any = copy.deepcopy(model).float().eval()
        clone.pt_path = str(Path(scratch) / "model.pt")  # the exporter names its outputs after this path
        ul_logger.setLevel(logging.WARNING)  # its per-export banner and "Predict: yolo predict ..." hints
        try:
            with offline_guards(), labels:
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
