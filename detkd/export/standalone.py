#!/usr/bin/env python3
"""Run a detkd deployment bundle on an image, a folder of images or a video file.

This file is copied verbatim into every bundle as ``infer.py``. It needs numpy, OpenCV and the bundle's runtime
(ONNX Runtime, OpenVINO, NCNN, LiteRT, TensorRT + cuda-python, or PyTorch for TorchScript); never detkd, and never
torch except for TorchScript. detkd imports the same file for its own preprocessing and runtime calls, so what the
bundle does on the device is what detkd checked.

Usage (inside the bundle folder)::

    python infer.py IMAGE|FOLDER|VIDEO [--conf 0.25] [--iou 0.7] [--threads N] [--save OUT_DIR] [--device CPU]

Prints one JSON line per image (or video frame): ``{"source", "frame", "detections": [{"box": [x1, y1, x2, y2],
"score", "class_id", "label"}]}`` with boxes in the original image's pixels. ``--save`` also writes the images (or
the video) with the boxes drawn.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

PAD_VALUE = 114
MAX_NMS_CANDIDATES = 30000
IMAGE_SUFFIXES = {".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".avi", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg", ".mpg", ".webm"}


# ----------------------------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class LetterboxMeta:
    """How an image was placed in the network input: ``input = original * ratio + (left, top)`` (``x`` scaled by
    ``ratio_w`` where a resize rounded the two sides differently, as Ultralytics' rectangular batches do)."""

    ratio: float
    left: int
    top: int
    orig_h: int
    orig_w: int
    ratio_w: float | None = None


def letterbox(img: np.ndarray, size: int, *, scaleup: bool = False) -> tuple[np.ndarray, LetterboxMeta]:
    """Resize keeping the aspect ratio and pad to ``size`` x ``size`` (centred).

    >>> out, meta = letterbox(np.zeros((50, 100, 3), np.uint8), 64, scaleup=True)
    >>> out.shape, meta.ratio, meta.top
    ((64, 64, 3), 0.64, 16)
    """
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    if not scaleup:
        r = min(r, 1.0)
    nw, nh = round(w * r), round(h * r)
    if (nw, nh) != (w, h):
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    left, top = (size - nw) // 2, (size - nh) // 2
    out = cv2.copyMakeBorder(
        img, top, size - nh - top, left, size - nw - left, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    # each side's own scale: the rounding of a side's pixel count stretches it by up to half a pixel
    return out, LetterboxMeta(ratio=nh / h, left=left, top=top, orig_h=h, orig_w=w, ratio_w=nw / w)


def preprocess(images: list[np.ndarray], size: int) -> tuple[np.ndarray, list[LetterboxMeta]]:
    """BGR uint8 images -> float32 (B, 3, size, size) RGB in [0, 1] plus their letterbox metadata.

    The long side is scaled to ``size`` (up or down), as Ultralytics' validation and detkd's evaluation do.
    """
    batch, metas = [], []
    for img in images:
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        boxed, meta = letterbox(img, size, scaleup=True)
        batch.append(boxed[:, :, ::-1].transpose(2, 0, 1))
        metas.append(meta)
    return np.ascontiguousarray(np.stack(batch), dtype=np.float32) / 255.0, metas


# ---------------------------------------------------------------------------------------------- postprocessing
def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, highest score first."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = w * h
        overlap = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def postprocess(
    raw: np.ndarray,
    metas: list[LetterboxMeta],
    *,
    end2end: bool = False,
    conf: float = 0.25,
    iou: float = 0.7,
    max_det: int = 300,
    nms_fn: Any = None,
    clip: bool = True,
) -> list[np.ndarray]:
    """Raw predictions -> one (n, 6) array per image (x1, y1, x2, y2, score, class) in original pixels (clipped
    to the image unless ``clip`` is false).

    ``raw`` is (B, 4 + nc, A) (xywh in input pixels + class probabilities; class-aware, multi-label NMS here) or,
    for end-to-end heads, (B, N, 6) (xyxy, score, class; no NMS needed). ``nms_fn(boxes, scores, iou)`` replaces
    the numpy :func:`nms` (detkd's evaluation passes torchvision's, faster at conf 0.001).
    """
    results = []
    for b, meta in enumerate(metas):
        p = np.asarray(raw[b], dtype=np.float32)
        if end2end:
            p = p[p[:, 4] > conf]
            p = p[np.argsort(-p[:, 4], kind="stable")[:max_det]]
            boxes, scores, classes = p[:, :4], p[:, 4], p[:, 5]
        else:
            p = p.T  # (A, 4 + nc)
            a_idx, c_idx = np.nonzero(p[:, 4:] > conf)
            scores = p[a_idx, 4 + c_idx]
            if scores.size > MAX_NMS_CANDIDATES:
                top = np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES]
                a_idx, c_idx, scores = a_idx[top], c_idx[top], scores[top]
            xy, wh = p[a_idx, :2], p[a_idx, 2:4]
            boxes = np.concatenate((xy - wh / 2, xy + wh / 2), axis=1)
            # class-aware NMS in one call: boxes of different classes are moved apart so that they never overlap
            offset = c_idx[:, None].astype(np.float32) * (float(boxes.max(initial=0.0)) + 1.0)
            keep = (nms_fn or nms)(boxes + offset, scores, iou)[:max_det]
            boxes, scores, classes = boxes[keep], scores[keep], c_idx[keep].astype(np.float32)
        boxes = boxes.copy()
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - meta.left) / (meta.ratio_w or meta.ratio)
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - meta.top) / meta.ratio
        if clip:
            boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, meta.orig_w)
            boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, meta.orig_h)
        results.append(np.concatenate((boxes, scores[:, None], classes[:, None]), axis=1).astype(np.float32))
    return results


# ---------------------------------------------------------------------------------------------------- runtimes
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


# ------------------------------------------------------------------------------------------------------ driver
def _frames(source: Path) -> Any:
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


def detect(runtime: Runtime, images: list[np.ndarray], conf: float, iou: float) -> list[np.ndarray]:
    x, metas = preprocess(images, runtime.imgsz)
    return postprocess(runtime(x), metas, end2end=runtime.end2end, conf=conf, iou=iou)


def _run(args: argparse.Namespace) -> int:
    runtime, meta = load_bundle(args.bundle, threads=args.threads, device=args.device)
    labels = [meta["classes"][str(i)] for i in range(len(meta["classes"]))]
    conf = meta["thresholds"]["conf"] if args.conf is None else args.conf
    iou = meta["thresholds"]["iou"] if args.iou is None else args.iou
    save = Path(args.save) if args.save else None
    if save:
        save.mkdir(parents=True, exist_ok=True)
    writer = None
    for name, frame_idx, img in _frames(Path(args.source)):
        dets = detect(runtime, [img], conf, iou)[0]
        record = {
            "source": name,
            "frame": frame_idx,
            "detections": [
                {"box": [round(v, 2) for v in d[:4]], "score": float(f"{d[4]:.6g}"), "class_id": int(d[5]),
                 "label": labels[int(d[5])]}
                for d in dets.tolist()
            ],
        }  # fmt: skip
        print(json.dumps(record), flush=True)
        if save:
            drawn = draw(img, dets, labels)
            if Path(name).suffix.lower() in VIDEO_SUFFIXES:
                if writer is None:
                    fps = cv2.VideoCapture(name).get(cv2.CAP_PROP_FPS) or 25.0
                    fourcc = cv2.VideoWriter.fourcc(*"mp4v")
                    writer = cv2.VideoWriter(str(save / (Path(name).stem + ".mp4")), fourcc, fps, drawn.shape[1::-1])
                writer.write(drawn)
            else:
                cv2.imwrite(str(save / Path(name).name), drawn)
    if writer is not None:
        writer.release()
    return 0


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description="Run a detkd deployment bundle.")
    parser.add_argument("source", help="image, folder of images, or video file")
    parser.add_argument("--bundle", default=str(here), help="bundle folder (default: this script's folder)")
    parser.add_argument("--conf", type=float, default=None, help="score threshold (default: the bundle's)")
    parser.add_argument("--iou", type=float, default=None, help="NMS IoU threshold (default: the bundle's)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="CPU", help="OpenVINO device (CPU, GPU, NPU) or VULKAN for NCNN")
    parser.add_argument("--save", default=None, help="folder for images/video with the boxes drawn")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except ImportError as e:  # the runtime is not installed on this machine
        print(f"error: this bundle needs its runtime: {e}; see README.md for the pip install line", file=sys.stderr)
    except (OSError, ValueError, RuntimeError, StopIteration) as e:
        print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
