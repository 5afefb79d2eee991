"""Distil the classic YOLOv5n COCO checkpoint into a smaller YOLOv8 student on the COCO subset, against the same
student trained without KD (same data, epochs, seed). Records the teacher's mAP too.

    python benchmarks/legacy_teacher.py --out /tmp/legacy --epochs 50 --imgsz 640

Needs ../shared/assets (or DETKD_ASSETS). The student is YOLOv8 at width 0.125 (``yolov8p``: about a third of
YOLOv5n's parameters), written from Ultralytics' packaged yolov8.yaml with one more scale.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ASSETS = Path(os.environ.get("DETKD_ASSETS", Path(__file__).resolve().parents[2] / "shared" / "assets"))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=["feature.method=pkd"], help="KD overrides")
    args = p.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from detkd.bench.quality import student_yaml
    from detkd.data.dataset import load_data_spec
    from detkd.engine.distiller import Distiller, train_detector
    from detkd.eval.coco import evaluate
    from detkd.eval.predict import TorchPredictor
    from detkd.students import ultralytics_yolo as uy
    from detkd.teachers import load_eval_model
    from detkd.utils.environment import run_environment

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    teacher = ASSETS / "weights" / "yolov5n-coco-legacy.pt"
    spec = load_data_spec(ASSETS / "coco_tiny" / "coco_tiny.yaml")
    student = student_yaml("yolov8p.yaml", out)
    train = {"epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch, "seed": args.seed,
             "device": args.device, "val": False, "plots": False}  # fmt: skip
    device = "cpu" if args.device == "cpu" else f"cuda:{args.device}"
    rows = {}

    def score(model, name, seconds):
        ev = evaluate(TorchPredictor(model, device), spec, "val", imgsz=args.imgsz)
        rows[name] = {"mAP50-95": ev.map50_95, "mAP50": ev.map50, "params": uy.count_parameters(model),
                      "seconds": round(seconds, 1)}  # fmt: skip
        print(name, rows[name], flush=True)

    t0 = time.time()
    score(load_eval_model(teacher), "teacher yolov5n (classic, COCO-trained)", 0.0)
    t = time.time()
    base = train_detector(student, spec, project=out / "runs", name="baseline", exist_ok=True, **train)
    score(uy.load_detection_model(base.best), "baseline yolov8p (no KD)", time.time() - t)
    t = time.time()
    kd = Distiller(teacher, student, spec, overrides=args.set).train(
        project=out / "runs", name="kd", exist_ok=True, **train
    )
    score(uy.load_detection_model(kd.best), "KD yolov8p <- yolov5n", time.time() - t)
    payload = {"args": vars(args), "kd_overrides": args.set, "rows": rows, "wall_s": time.time() - t0,
               **run_environment()}  # fmt: skip
    (out / "legacy_teacher.json").write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
