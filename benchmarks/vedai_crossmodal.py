"""VEDAI RGB -> near-infrared smoke run: a teacher trained on colour images teaches a NIR student through a paired
teacher cache, with detkd's own commands.

    python benchmarks/vedai_crossmodal.py [--epochs 40] [--imgsz 320] [--work runs/vedai] [--out benchmarks/results]

Steps: copy ``$DETKD_ASSETS/vedai_rgbnir`` (never train on the shared copy), train a YOLOv8s teacher on ``rgb``,
score it on the RGB and on the NIR val images, cache its view of each scene's RGB image for the NIR training images
(``detkd cache --pair-dir``), then train a YOLOv8n NIR student without KD and with KD from the cache (same seed and
budget). 83 train / 6 val pairs: a smoke case that shows the mechanism end to end on real aligned pairs, far too
small to rank methods.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def detkd(*args: str) -> dict:
    started = time.time()
    out = subprocess.run([sys.executable, "-m", "detkd", *args], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "YOLO_OFFLINE": "1"})  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"detkd {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    line = [ln for ln in out.stdout.strip().splitlines() if ln.startswith("{")][-1]
    return {**json.loads(line), "seconds": round(time.time() - started, 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--work", default=str(ROOT / "runs" / "vedai"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ns = ap.parse_args()
    assets = Path(os.environ.get("DETKD_ASSETS") or ROOT.parent / "shared" / "assets") / "vedai_rgbnir"
    work = Path(ns.work).resolve()
    data = work / "vedai_rgbnir"
    if not data.is_dir():
        shutil.copytree(assets, data)
    common = ["--epochs", str(ns.epochs), "--imgsz", str(ns.imgsz), "--batch", "16", "--device", "cpu",
              "--seed", "0", "--project", str(work / "runs"), "--exist-ok", "--train-arg", "val=False"]  # fmt: skip
    res: dict = {}
    res["teacher"] = detkd("train", "--model", "yolov8s.yaml", "--data", str(data / "rgb.yaml"), "--name", "teacher",
                           *common)  # fmt: skip
    teacher = res["teacher"]["best"].replace("best.pt", "last.pt")

    def evaluate(model: str, yaml: str, tag: str) -> dict:
        return detkd("eval", "--model", model, "--data", str(data / yaml), "--imgsz", str(ns.imgsz), "--device", "cpu",
                     "--out", str(work / "eval" / tag))  # fmt: skip

    res["teacher_on_rgb"] = evaluate(teacher, "rgb.yaml", "teacher_rgb")
    res["teacher_on_nir"] = evaluate(teacher, "ir.yaml", "teacher_nir")
    res["cache"] = detkd("cache", "--teacher", teacher, "--data", str(data / "ir.yaml"), "--pair-dir",
                         str(data / "rgb" / "images" / "train"), "--imgsz", str(ns.imgsz), "--out",
                         str(work / "cache"), "--device", "cpu")  # fmt: skip
    res["baseline"] = detkd("train", "--model", "yolov8n.yaml", "--data", str(data / "ir.yaml"), "--name", "baseline",
                            *common)  # fmt: skip
    res["kd"] = detkd("distill", "--teacher-cache", str(work / "cache"), "--student", "yolov8n.yaml", "--data",
                      str(data / "ir.yaml"), "--set", "kd.feature.weight=0", "--name", "kd", *common)  # fmt: skip
    for run in ("baseline", "kd"):
        res[f"{run}_on_nir"] = evaluate(res[run]["best"].replace("best.pt", "last.pt"), "ir.yaml", run)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    payload = {"kind": "vedai-crossmodal", "epochs": ns.epochs, "imgsz": ns.imgsz, "device": "cpu",
               "commit": commit.stdout.strip(), "date": time.strftime("%Y-%m-%d"), "results": res}  # fmt: skip
    out = Path(ns.out) / f"vedai_crossmodal_cpu_{payload['date']}.json"
    out.write_text(json.dumps(payload, indent=2))
    for k in ("teacher_on_rgb", "teacher_on_nir", "baseline_on_nir", "kd_on_nir"):
        print(k, {m: res[k].get(m) for m in ("AP", "AP50")})
    print(json.dumps({"result": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
