"""Runtimes: one exported model in its own inference engine (ONNX Runtime, OpenVINO, NCNN, LiteRT,
TensorRT, TorchScript), and a bundle folder loaded into one.

Each engine is imported when its runtime is built, so a bundle needs only its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


class Runtime:
    """One exported model in its own runtime: float32 (B, 3, S, S) in [0, 1] -> raw predictions (see postprocess)."""

    name = "runtime"
    max_batch: int | None = 1  # detkd exports a static batch of 1; larger inputs are split

    def __init__(self, path: Path, meta: dict[str, Any], threads: int | None = None, device: str = "CPU") -> None:
        self.path, self.meta, self.threads, self.device = Path(path), meta, threads, device
        self.end2end = bool(meta.get("end2end", False))
        self.imgsz = int(meta["imgsz"][0])

    def run(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.max_batch is not None and len(x) > self.max_batch:
            return np.concatenate([self(x[i : i + self.max_batch]) for i in range(0, len(x), self.max_batch)])
        out = np.asarray(self.run(x), dtype=np.float32)
        if self.meta.get("boxes_normalized") and not self.end2end:  # LiteRT exports boxes divided by the input size
            out = out.copy()
            out[:, :4] *= self.imgsz
        return out


class OnnxRuntime(Runtime):
    name = "onnxruntime"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import onnxruntime as ort

        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        providers = ["CPUExecutionProvider"]
        if self.device.upper().startswith(("CUDA", "GPU")):
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.max_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


class OpenVINORuntime(Runtime):
    name = "openvino"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import openvino as ov

        xml = self.path if self.path.suffix == ".xml" else next(self.path.glob("*.xml"))
        config: dict[str, Any] = {}
        if self.threads and self.device.upper() == "CPU":
            config["INFERENCE_NUM_THREADS"] = self.threads
        if self.meta.get("inference_precision"):  # "f32" for exact FP32 bundles; unset lets the device choose
            config["INFERENCE_PRECISION_HINT"] = self.meta["inference_precision"]
        core = ov.Core()
        self.compiled = core.compile_model(core.read_model(str(xml)), self.device.upper(), config)
        self.output = self.compiled.output(0)
        shape = self.compiled.input(0).get_partial_shape()[0]
        self.max_batch = shape.get_length() if shape.is_static else None

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.compiled(x)[self.output]


class NcnnRuntime(Runtime):
    name = "ncnn"
    max_batch = None  # the network takes one image at a time; run() loops

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import ncnn

        self.ncnn = ncnn
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = self.device.upper().startswith("VULKAN")
        if self.threads:
            self.net.opt.num_threads = self.threads
        param = self.path if self.path.suffix == ".param" else next(self.path.glob("*.param"))
        if self.net.load_param(str(param)) != 0 or self.net.load_model(str(param.with_suffix(".bin"))) != 0:
            raise RuntimeError(f"{param}: NCNN cannot load the model")
        self.input_name = self.net.input_names()[0]
        self.output_name = sorted(self.net.output_names())[0]

    def run(self, x: np.ndarray) -> np.ndarray:
        outs = []
        for sample in x:
            with self.net.create_extractor() as ex:
                ex.input(self.input_name, self.ncnn.Mat(np.ascontiguousarray(sample)))
                outs.append(np.array(ex.extract(self.output_name)[1]))
        return np.stack(outs)


class LiteRTRuntime(Runtime):
    name = "litert"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # the older standalone interpreter package
            from tflite_runtime.interpreter import Interpreter

        self.interpreter = Interpreter(str(self.path), num_threads=self.threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.nhwc = int(self.input["shape"][-1]) == 3
        self.max_batch = int(self.input["shape"][0])

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.nhwc:
            x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        dtype = self.input["dtype"]
        if dtype in (np.int8, np.int16, np.uint8):  # full-integer graphs take quantized input
            scale, zero = self.input["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])
        if self.output["dtype"] in (np.int8, np.int16, np.uint8):
            scale, zero = self.output["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y


def strip_engine_header(data: bytes) -> bytes:
    """A serialized TensorRT engine without the metadata header Ultralytics writes before it, if there is one.

    The header is a little-endian int32 length followed by that many bytes of JSON.

    >>> strip_engine_header((7).to_bytes(4, "little") + b'{"a":1}' + b"ENGINE")
    b'ENGINE'
    >>> strip_engine_header(b"ENGINE-without-header")
    b'ENGINE-without-header'
    """
    n = int.from_bytes(data[:4], "little", signed=True)
    if 0 < n < len(data) - 4 and data[4 : 4 + n].lstrip().startswith(b"{"):
        return data[4 + n :]
    return data


class TensorRTRuntime(Runtime):
    """A serialized TensorRT engine (built on, and only valid for, the GPU model and TensorRT version it ran on)."""

    name = "tensorrt"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import tensorrt as trt

        try:
            from cuda.bindings import runtime as cudart
        except ImportError:  # cuda-python < 12.6
            from cuda import cudart

        self.cudart = cudart
        data = strip_engine_header(self.path.read_bytes())
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(data)
        if self.engine is None:
            raise RuntimeError(f"{self.path}: TensorRT cannot load this engine (built for another GPU or version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.in_shape = tuple(self.engine.get_tensor_shape(self.input_name))
        self.out_shape = tuple(self.engine.get_tensor_shape(self.output_name))
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        self.max_batch = int(self.in_shape[0])
        self.d_in = self._check(cudart.cudaMalloc(int(np.prod(self.in_shape)) * self.in_dtype.itemsize))
        self.d_out = self._check(cudart.cudaMalloc(int(np.prod(self.out_shape)) * self.out_dtype.itemsize))
        self.context.set_tensor_address(self.input_name, int(self.d_in))
        self.context.set_tensor_address(self.output_name, int(self.d_out))
        self.stream = self._check(cudart.cudaStreamCreate())

    def _check(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA error {err}")
        return rest[0] if rest else None

    def run(self, x: np.ndarray) -> np.ndarray:
        rt = self.cudart
        h_in = np.ascontiguousarray(x.astype(self.in_dtype).reshape(self.in_shape))
        h_out = np.empty(self.out_shape, dtype=self.out_dtype)
        self._check(rt.cudaMemcpy(self.d_in, h_in.ctypes.data, h_in.nbytes, rt.cudaMemcpyKind.cudaMemcpyHostToDevice))
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError("TensorRT execution failed")
        self._check(rt.cudaStreamSynchronize(self.stream))
        self._check(
            rt.cudaMemcpy(h_out.ctypes.data, self.d_out, h_out.nbytes, rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)
        )
        return h_out


class TorchScriptRuntime(Runtime):
    name = "torchscript"
    max_batch = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        import torch

        self.torch = torch
        if self.threads:
            torch.set_num_threads(self.threads)
        import warnings

        with warnings.catch_warnings():  # torch >= 2.9 marks TorchScript deprecated; it still is LibTorch's format
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(str(self.path), map_location="cpu").eval()

    def run(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            y = self.module(self.torch.from_numpy(x))
        return (y[0] if isinstance(y, (list, tuple)) else y).float().numpy()


RUNTIMES: dict[str, type[Runtime]] = {
    r.name: r for r in (OnnxRuntime, OpenVINORuntime, NcnnRuntime, LiteRTRuntime, TensorRTRuntime, TorchScriptRuntime)
}


def load_bundle(bundle: str | Path, threads: int | None = None, device: str = "CPU") -> tuple[Runtime, dict]:
    """The runtime and metadata of a bundle folder (the one that holds ``metadata.json``)."""
    bundle = Path(bundle)
    meta_file = bundle / "metadata.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file}: not found; is {bundle} a detkd bundle?")
    meta = json.loads(meta_file.read_text())
    runtime = RUNTIMES.get(meta.get("runtime", ""))
    if runtime is None:
        raise ValueError(f"{meta_file}: unknown runtime {meta.get('runtime')!r}; known: {', '.join(RUNTIMES)}")
    model = bundle / str(meta.get("model", ""))
    if not meta.get("model") or not model.exists():
        raise FileNotFoundError(f"{model}: the bundle's model is missing (metadata.json names {meta.get('model')!r})")
    return runtime(model, meta, threads=threads, device=device), meta
