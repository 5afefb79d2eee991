"""Export a student, check the result in its own runtime, and package a deployment bundle.

``export_model`` exports with Ultralytics' exporter, then checks what that exporter does not: raw-output parity
against PyTorch on real images, COCO mAP of both runtimes on the data (when given), and CPU latency. The bundle
folder holds the model, ``labels.json`` and ``metadata.json`` (input size, preprocessing, classes, measured mAP and
latency, detkd version, teacher and KD recipe).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from detkd import __version__
from detkd.errors import ConfigError

LOGGER = logging.getLogger(__name__)

FORMATS = ("onnx",)
PREPROCESSING = {
    "color": "RGB",
    "layout": "NCHW",
    "dtype": "float32",
    "scale": "1/255",
    "resize": "letterbox: long side scaled to the input size (up or down), aspect ratio kept, centred, pad value 114",
    "output": "(1, 4 + nc, anchors): xywh in input pixels + class probabilities; apply NMS (iou 0.7)",
}


@dataclass
class ExportReport:
    format: str
    model_file: Path
    bundle_dir: Path
    imgsz: int
    parity: dict[str, Any]
    latency: dict[str, dict[str, Any]]
    map: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.parity.get("passed"))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model_file"], d["bundle_dir"], d["passed"] = str(self.model_file), str(self.bundle_dir), self.passed
        return d


def _exporter(fmt: str) -> tuple[Callable[..., Path], Callable[..., Any], str]:
    if fmt != "onnx":
        raise ConfigError(f"export format '{fmt}' is not available yet; available: {', '.join(FORMATS)}")
    from detkd.export.onnx import OnnxPredictor, export_onnx

    return export_onnx, OnnxPredictor, ".onnx"


def _recipe(weights: Path) -> dict[str, Any] | None:
    """The teacher and KD recipe recorded by ``detkd distill`` beside the run's weights, if any."""
    run_json = weights.resolve().parent.parent / "detkd_run.json"
    if not run_json.is_file():
        return None
    meta = json.loads(run_json.read_text())
    return {k: meta.get(k) for k in ("kind", "teacher", "student", "kd", "box_kd_mode", "data")}


def export_model(
    weights: str | Path,
    fmt: str = "onnx",
    *,
    imgsz: int | None = None,
    data: str | Path | None = None,
    split: str = "val",
    out_dir: str | Path | None = None,
    parity_images: int = 8,
    latency_runs: int = 50,
    threads: int | None = None,
) -> ExportReport:
    """Export ``weights`` to ``fmt``, verify it against PyTorch and write a bundle."""
    import numpy as np

    from detkd.data.dataset import list_images, load_data_spec
    from detkd.engine.trainer import set_cpu_threads
    from detkd.eval.coco import evaluate
    from detkd.eval.predict import TorchPredictor
    from detkd.export.checks import measure_latency, raw_parity
    from detkd.students import ultralytics_yolo as uy

    export_fn, predictor_cls, suffix = _exporter(fmt)
    weights = Path(weights)
    model = uy.load_detection_model(weights)
    spec = load_data_spec(data) if data is not None else None
    train_args = getattr(model, "args", None) or {}
    imgsz = int(imgsz or (train_args.get("imgsz") if isinstance(train_args, dict) else None) or 640)
    bundle = Path(out_dir) if out_dir else weights.parent / f"{weights.stem}_{fmt}"
    bundle.mkdir(parents=True, exist_ok=True)

    model_file = export_fn(model, bundle / f"model{suffix}", imgsz)
    set_cpu_threads(threads)
    torch_pred = TorchPredictor(model, "cpu")
    candidate = predictor_cls(model_file, threads=threads)

    if spec is not None:
        images: Any = list_images(spec, split)[:parity_images]
    else:  # no data: compare on a fixed random batch (weaker than real images; say so in the report)
        images = np.random.default_rng(0).random((2, 3, imgsz, imgsz), dtype=np.float32)
    parity = raw_parity(torch_pred, candidate, images, imgsz).to_dict()
    parity["inputs"] = f"{parity['images']} images from {split}" if spec is not None else "random tensors (no --data)"
    LOGGER.info("parity %s vs pytorch: %s", fmt, parity)

    maps: dict[str, dict[str, float]] = {}
    if spec is not None:
        for name, pred in (("pytorch", torch_pred), (fmt, candidate)):
            res = evaluate(pred, spec, split, imgsz=imgsz)
            maps[name] = {"mAP50-95": res.map50_95, "mAP50": res.map50}
        maps["delta"] = {k: maps[fmt][k] - maps["pytorch"][k] for k in ("mAP50-95", "mAP50")}

    latency = {
        "pytorch": measure_latency(torch_pred, imgsz, runs=latency_runs).to_dict(),
        fmt: measure_latency(candidate, imgsz, runs=latency_runs).to_dict(),
    }
    names = uy.class_names(model)
    (bundle / "labels.json").write_text(json.dumps([names[i] for i in sorted(names)], indent=2))
    metadata = {
        "format": fmt,
        "model": model_file.name,
        "imgsz": [imgsz, imgsz],
        "preprocessing": PREPROCESSING,
        "classes": {str(k): v for k, v in names.items()},
        "map": maps or None,
        "latency_ms": {k: {"median": v["median_ms"], "p90": v["p90_ms"]} for k, v in latency.items()},
        "parity": parity,
        "detkd_version": __version__,
        "source_weights": str(weights),
        "recipe": _recipe(weights),
    }
    (bundle / "metadata.json").write_text(json.dumps(metadata, indent=2))
    report = ExportReport(fmt, model_file, bundle, imgsz, parity, latency, maps)
    (bundle / "export_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report
