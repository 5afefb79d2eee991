"""Export targets: which converter, precision and runtime each ``--format`` name means, and where it runs.

A target is one (format, precision) pair a user can ask for, e.g. ``openvino-int8``. Each names the Ultralytics
export format and ``quantize`` setting that produce it, the runtime that executes it (detkd's gate and the bundle's
``infer.py`` use the same one), the Python packages both need, and the hardware it is for. ``check_available``
says before any work starts whether this machine can produce the target, and if not, why and which machine can.
"""

from __future__ import annotations

import importlib.util
import platform
import sys
from dataclasses import dataclass, field
from typing import Any

from detkd.errors import ConfigError, DetkdError


class FormatUnavailableError(DetkdError):
    """A target that cannot be produced on this machine (missing package, no GPU, unsupported platform)."""


@dataclass(frozen=True)
class Target:
    name: str  # what users type: onnx, openvino-int8, ...
    ultralytics_format: str  # Exporter's format= argument
    precision: str  # fp32 | fp16 | int8
    runtime: str  # key of detkd.infer.runtimes.RUNTIMES
    hardware: str  # who it is for, in a few words
    packages: dict[str, str]  # import name -> pip requirement, needed to export *and* run
    needs_gpu: bool = False
    runtime_options: dict[str, Any] = field(default_factory=dict)  # written to metadata.json for infer.py
    fallback: str | None = None  # the target to try when this one fails its gate and fallback is on

    @property
    def end2end_capable(self) -> bool:
        """Whether the format can hold a one-to-one head's top-k (Ultralytics drops it for NCNN and LiteRT INT8)."""
        return self.runtime != "ncnn" and not (self.runtime == "litert" and self.precision == "int8")

    @property
    def quantize(self) -> int | None:
        return {"fp32": None, "fp16": 16, "int8": 8}[self.precision]

    @property
    def calibrates(self) -> bool:
        return self.precision == "int8"


_OV = {"openvino": "openvino>=2024.0"}
_NCNN = {"ncnn": "ncnn", "pnnx": "pnnx==20260526"}
_LITERT = {"litert_torch": "litert-torch>=0.10", "ai_edge_litert": "ai-edge-litert>=2.3"}
_TRT = {"tensorrt": "tensorrt>=10", "cuda": "cuda-python"}

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("onnx", "onnx", "fp32", "onnxruntime", "any CPU or GPU with ONNX Runtime (x86, ARM)",
               {"onnxruntime": "onnxruntime"}),
        Target("openvino", "openvino", "fp32", "openvino", "Intel CPUs, iGPUs and NPUs (exact FP32 inference)",
               _OV, runtime_options={"inference_precision": "f32"}),
        Target("openvino-fp16", "openvino", "fp16", "openvino",
               "Intel CPUs/iGPUs/NPUs, FP16 weights; the device picks its fastest precision (bf16 on AMX/AVX512 CPUs)",
               _OV, fallback="openvino"),
        Target("openvino-int8", "openvino", "int8", "openvino",
               "Intel CPUs/NPUs, NNCF post-training INT8 with calibration images",
               {**_OV, "nncf": "nncf>=2.14"}, fallback="openvino-fp16"),
        Target("ncnn", "ncnn", "fp32", "ncnn", "ARM boards, drones and phones (Raspberry Pi, Jetson CPU, Android)",
               _NCNN),
        Target("ncnn-fp16", "ncnn", "fp16", "ncnn", "ARM boards with FP16 arithmetic (ARMv8.2+), half-size weights",
               _NCNN, fallback="ncnn"),
        Target("litert", "litert", "fp32", "litert", "Android/iOS phones and small ARM CPUs (LiteRT/TFLite)",
               _LITERT),
        Target("litert-int8", "litert", "int8", "litert", "phones' NPUs/DSPs and INT8 CPUs (static INT8 LiteRT)",
               _LITERT, fallback="litert"),
        Target("tensorrt", "engine", "fp32", "tensorrt", "NVIDIA Jetson and GPUs (engine built on the target GPU)",
               _TRT, needs_gpu=True),
        Target("tensorrt-fp16", "engine", "fp16", "tensorrt", "NVIDIA Jetson and GPUs, FP16 tensor cores",
               _TRT, needs_gpu=True, fallback="tensorrt"),
        Target("tensorrt-int8", "engine", "int8", "tensorrt", "NVIDIA Jetson Orin/GPUs, INT8 with calibration",
               _TRT, needs_gpu=True, fallback="tensorrt-fp16"),
        Target("torchscript", "torchscript", "fp32", "torchscript", "C++ apps with LibTorch; servers",
               {"torch": "torch"}),
    )
}  # fmt: skip


def parse_targets(spec: str | list[str]) -> list[Target]:
    """``"onnx,openvino-int8"`` -> targets, in order, without duplicates; unknown names list the valid ones."""
    names = [n.strip().lower() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if not names:
        raise ConfigError(f"no export format given; choose from: {', '.join(TARGETS)}")
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        import difflib

        hints = [f"'{n}'" + (f" (did you mean '{m[0]}'?)" if (m := difflib.get_close_matches(n, TARGETS, 1)) else "")
                 for n in unknown]  # fmt: skip
        raise ConfigError(f"unknown export format {', '.join(hints)}; choose from: {', '.join(TARGETS)}")
    return [TARGETS[n] for n in dict.fromkeys(names)]


def _missing(target: Target) -> list[str]:
    return [pip for module, pip in target.packages.items() if importlib.util.find_spec(module) is None]


def check_available(target: Target, *, device: str = "cpu", has_data: bool = False) -> None:
    """Raise ``FormatUnavailableError`` (or ``ConfigError`` for arguments) saying why ``target`` cannot be made here."""
    if target.calibrates and not has_data:
        raise ConfigError(
            f"{target.name} needs calibration images: pass --data (a data YAML; its train split calibrates and its "
            "val split gates)"
        )
    if target.needs_gpu:
        import torch

        if not torch.cuda.is_available():
            raise FormatUnavailableError(
                f"{target.name}: TensorRT engines are built on the NVIDIA GPU they will run on, and this machine has "
                "no CUDA device. Export on the target itself (e.g. the Jetson, with JetPack's TensorRT) or on a "
                f"machine with the same GPU: `pip install tensorrt cuda-python` there, then "
                f"`detkd export --format {target.name} --device 0 ...`"
            )
        if device == "cpu":
            raise ConfigError(f"{target.name} is built on the GPU: pass --device 0 (or the GPU to build on)")
    if target.runtime == "litert" and not (sys.platform == "darwin" or platform.machine() in ("x86_64", "AMD64")):
        raise FormatUnavailableError(
            f"{target.name}: the LiteRT converter runs on Linux x86-64 and macOS only (this is "
            f"{sys.platform}/{platform.machine()}); export there and copy the bundle to the device"
        )
    missing = _missing(target)
    if missing:
        extra = {"litert": " (or `pip install detkd[litert]`)", "tensorrt": ""}.get(target.runtime, "")
        raise FormatUnavailableError(
            f"{target.name}: needs {', '.join(missing)}, not installed here. Install with "
            f"`pip install {' '.join(repr(m) if '>' in m or '=' in m else m for m in missing)}`{extra}"
            " (from the package registry; nothing is downloaded at export time)"
        )


def targets_table() -> list[dict[str, Any]]:
    """Every target with its precision, runtime, hardware and whether this machine can produce it now."""
    rows = []
    for t in TARGETS.values():
        try:
            check_available(t, device="0" if t.needs_gpu else "cpu", has_data=True)
            status = "available"
        except DetkdError as e:
            status = str(e).split(": ", 1)[-1]
        rows.append({"format": t.name, "precision": t.precision, "runtime": t.runtime, "hardware": t.hardware,
                     "status": status})  # fmt: skip
    return rows
