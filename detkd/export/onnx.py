"""ONNX export with Ultralytics' exporter, and an ONNX Runtime predictor for checking it."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from detkd._offline import ensure_offline
from detkd.errors import DetkdError, InputFileError

ensure_offline()

LOGGER = logging.getLogger(__name__)


def export_onnx(
    model: nn.Module, out_file: Path, imgsz: int, *, simplify: bool = True, opset: int | None = None
) -> Path:
    """Export a bare Ultralytics detection model to ``out_file`` (static batch 1, FP32, NMS outside the graph)."""
    from ultralytics.engine.exporter import Exporter

    out_file.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).float().eval()
    copy_: Any = model
    copy_.pt_path = str(out_file.with_suffix(".pt"))  # the exporter names its output after this path
    overrides: dict[str, Any] = {
        "format": "onnx",
        "imgsz": imgsz,
        "simplify": simplify,
        "opset": opset,
        "device": "cpu",
        "dynamic": False,
        "batch": 1,
        "verbose": False,
    }
    produced = Path(Exporter(overrides=overrides)(model=model))
    if not produced.is_file():
        raise DetkdError(f"ONNX export produced no file at {produced}")
    if produced != out_file:
        produced.replace(out_file)
    return out_file


class OnnxPredictor:
    """An exported model in ONNX Runtime (CPU)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise InputFileError(path, "ONNX model not found")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types for invalid graphs
            raise InputFileError(path, f"ONNX Runtime cannot load the model ({e})") from e
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.max_batch: int | None = inp.shape[0] if isinstance(inp.shape[0], int) else None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.end2end = meta.get("end2end", "False") == "True"
        self.metadata = meta

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.max_batch is not None and len(x) > self.max_batch:
            return np.concatenate([self(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)])
        return self.session.run(None, {self.input_name: x.astype(np.float32)})[0]
