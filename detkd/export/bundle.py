"""Deployment bundles: the model files plus everything needed to run them without detkd.

A bundle folder holds the exported model (a file or a folder), ``labels.json``, ``metadata.json`` (input size,
letterbox and normalisation, class names, thresholds, measured mAP and latency, detkd version, teacher and KD
recipe), ``infer.py`` (one self-contained script written from :mod:`detkd.infer`, see :mod:`detkd.infer.script`)
and a ``README.md`` saying how to run it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detkd.export.targets import Target
from detkd.infer.script import standalone_script

PREPROCESSING = {
    "color": "RGB",
    "layout": "NCHW",
    "dtype": "float32",
    "scale": "1/255",
    "resize": "letterbox: long side scaled to the input size (up or down), aspect ratio kept, centred, pad value 114",
}
OUTPUT = {
    False: "(1, 4 + nc, anchors): xywh in input pixels + class probabilities; class-aware NMS outside the model",
    True: "(1, N, 6): x1, y1, x2, y2 in input pixels, score, class (one-to-one head; no NMS needed)",
}

# What a device needs to run a bundle's infer.py (besides Python 3.9+): numpy, OpenCV and the runtime.
RUN_PACKAGES = {
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "ncnn": "ncnn",
    "litert": "ai-edge-litert  # or tflite-runtime on boards without an ai-edge-litert wheel",
    "tensorrt": "cuda-python  # TensorRT itself comes with JetPack / the NVIDIA driver stack",
    "torchscript": "torch",
}


def model_size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def recipe_of(weights: Path) -> dict[str, Any] | None:
    """The teacher and KD recipe recorded by ``detkd distill`` beside the run's weights, if any."""
    run_json = weights.resolve().parent.parent / "detkd_run.json"
    if not run_json.is_file():
        return None
    meta = json.loads(run_json.read_text())
    return {k: meta.get(k) for k in ("kind", "teacher", "student", "kd", "box_kd_mode", "data")}


def runtime_metadata(target: Target, model_path: Path, imgsz: int, end2end: bool, names: dict[int, str]) -> dict:
    """What ``detkd.infer.load_bundle`` needs to run the model (written first, completed after the checks)."""
    return {
        "format": target.name,
        "precision": target.precision,
        "runtime": target.runtime,
        "model": model_path.name,
        "imgsz": [imgsz, imgsz],
        "end2end": end2end,
        "boxes_normalized": target.runtime == "litert",  # Ultralytics' LiteRT export divides boxes by the input size
        **target.runtime_options,
        "preprocessing": {**PREPROCESSING, "output": OUTPUT[end2end]},
        "classes": {str(k): v for k, v in sorted(names.items())},
        "thresholds": {"conf": 0.25, "iou": 0.7},
    }


def _readme(target: Target, meta: dict[str, Any]) -> str:
    lat = meta.get("latency_ms") or {}
    gate = meta.get("gate") or {}
    lines = [
        f"# {target.name} bundle ({target.precision}, {target.runtime})",
        "",
        f"For: {target.hardware}.",
        "",
        "Run it on the device (Python 3.9+, no detkd and no PyTorch needed"
        + (" except the TorchScript runtime itself" if target.runtime == "torchscript" else "")
        + "):",
        "",
        "```bash",
        f"pip install numpy opencv-python-headless {RUN_PACKAGES[target.runtime]}",
        "python infer.py image.jpg                 # one JSON line of detections per image",
        "python infer.py images/ --save drawn/     # a folder; images with boxes drawn go to drawn/",
        "python infer.py video.mp4 --save drawn/   # one JSON line per frame; drawn/video.mp4",
        "```",
        "",
        f"Input {meta['imgsz'][0]}x{meta['imgsz'][1]}, letterboxed; thresholds conf {meta['thresholds']['conf']}, "
        f"NMS IoU {meta['thresholds']['iou']} (`--conf`, `--iou`); `--threads N` sets the runtime's CPU threads.",
    ]
    if target.runtime == "tensorrt":
        lines += ["", "A TensorRT engine runs only on the GPU model and TensorRT version it was built with."]
    if lat:
        model_ms = lat.get("inference", {}).get("median")
        lines += ["", f"Measured on the export machine: model call {model_ms:.1f} ms median (batch 1)."]
    if gate:
        lines += ["", f"Accuracy gate: {gate['reason']}"]
    return "\n".join(lines) + "\n"


def write_bundle(bundle: Path, target: Target, meta: dict[str, Any]) -> None:
    names = meta["classes"]
    (bundle / "labels.json").write_text(json.dumps([names[str(i)] for i in range(len(names))], indent=2))
    (bundle / "metadata.json").write_text(json.dumps(meta, indent=2))
    (bundle / "infer.py").write_text(standalone_script())
    (bundle / "README.md").write_text(_readme(target, meta))
