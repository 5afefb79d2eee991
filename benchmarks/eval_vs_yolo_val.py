"""``detkd eval`` beside ``yolo val`` on one checkpoint and dataset: the numbers a user compares, measured.

    python benchmarks/eval_vs_yolo_val.py --model best.pt --data data.yaml [--imgsz N] [--batch 16]
        [--out benchmarks/results/eval_vs_yolo_val_<name>.json]

Copies the val split (images + YOLO labels; and the official COCO json if the data has one) to a scratch folder,
since ``yolo val`` writes a label cache beside the labels, then reports, on the same checkpoint and batch size:
``yolo val`` (rect), ``detkd eval`` with its defaults (rect) and with ``--no-rect`` (square, as the export gate),
each as Ultralytics' mAP50-95 / mAP50 and pycocotools' AP / AP50 where detkd computes it. The checkpoint is
loaded by Ultralytics' own ``YOLO()`` for ``yolo val``: use it on checkpoints you trust.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def copy_val(data: Path, scratch: Path) -> Path:
    from detkd.data.coco import ground_truth_for_split
    from detkd.data.dataset import load_data_spec

    spec = load_data_spec(data)
    images = ground_truth_for_split(spec, "val")[2]
    (scratch / "images" / "val").mkdir(parents=True)
    (scratch / "labels" / "val").mkdir(parents=True)
    for img in images:
        shutil.copy2(img, scratch / "images" / "val" / img.name)
        label = Path(str(img.parent).replace("/images", "/labels")) / f"{img.stem}.txt"
        if label.is_file():
            shutil.copy2(label, scratch / "labels" / "val" / label.name)
    official = Path(yaml.safe_load(data.read_text()).get("path") or data.parent)
    gt = (data.parent / official if not official.is_absolute() else official) / "annotations" / "instances_val.json"
    if gt.is_file():
        (scratch / "annotations").mkdir()
        shutil.copy2(gt, scratch / "annotations" / gt.name)
    out = scratch / "data.yaml"
    names = dict(spec.names)
    out.write_text(yaml.safe_dump({"path": str(scratch), "train": "images/val", "val": "images/val", "names": names}))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--imgsz", type=int, default=None, help="default: the checkpoint's training size")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    import detkd
    from detkd.utils.environment import run_environment

    with tempfile.TemporaryDirectory() as tmp:
        data = copy_val(Path(a.data).resolve(), Path(tmp) / "data")
        rows = {}
        for rect in (True, False):
            t0 = time.time()
            r = detkd.evaluate(a.model, data, imgsz=a.imgsz, batch=a.batch, rect=rect, out=Path(tmp) / f"ev{rect}",
                               plots=False, progress=False)  # fmt: skip
            rows["detkd eval" + ("" if rect else " --no-rect")] = {
                "imgsz": r.settings["imgsz"], "letterbox": r.settings["letterbox"], "ground_truth": r.ground_truth,
                "ultralytics mAP50-95": r.yolo["mAP50-95"], "ultralytics mAP50": r.yolo["mAP50"],
                "pycocotools AP": r.metrics["AP"], "pycocotools AP50": r.metrics["AP50"], "seconds": time.time() - t0,
            }  # fmt: skip
        from ultralytics import YOLO

        t0 = time.time()
        imgsz = rows["detkd eval"]["imgsz"]
        m = YOLO(a.model).val(data=str(data), imgsz=imgsz, batch=a.batch, device="cpu", plots=False,
                              project=tmp, name="yv", verbose=False)  # fmt: skip
        rows["yolo val"] = {"imgsz": imgsz, "letterbox": "rect", "ultralytics mAP50-95": float(m.box.map),
                            "ultralytics mAP50": float(m.box.map50), "seconds": time.time() - t0}  # fmt: skip
    d = rows["detkd eval"]
    summary = {
        "detkd - yolo val (Ultralytics mAP50-95)": d["ultralytics mAP50-95"] - rows["yolo val"]["ultralytics mAP50-95"],
        "pycocotools - Ultralytics (mAP50-95, detkd eval)": d["pycocotools AP"] - d["ultralytics mAP50-95"],
        "square - rect (pycocotools AP)": rows["detkd eval --no-rect"]["pycocotools AP"] - d["pycocotools AP"],
    }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    record = {"kind": "eval_vs_yolo_val", "model": a.model, "data": a.data, "batch": a.batch, "rows": rows,
              "summary": summary, "commit": commit.strip(), "command": " ".join(sys.argv),
              "environment": run_environment()}  # fmt: skip
    text = json.dumps(record, indent=2, default=str)
    if a.out:
        Path(a.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
