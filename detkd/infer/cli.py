"""The bundle's command line: detect on an image, a folder or a video, print JSON lines, save drawings."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from detkd.infer.decode import postprocess
from detkd.infer.letterboxing import preprocess
from detkd.infer.media import VIDEO_SUFFIXES, draw, frames
from detkd.infer.runtimes import Runtime, load_bundle


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
    for name, frame_idx, img in frames(Path(args.source)):
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
