"""``detkd eval`` against ``yolo val`` on the same checkpoint and data.

With its defaults (the checkpoint's image size, Ultralytics' rectangular batches), ``detkd eval`` reports
Ultralytics' definition of P, R, mAP50 and mAP50-95 equal to ``yolo val``'s to 1e-4 (in practice to ~1e-7), on
square and on mixed-aspect images; pycocotools' mAP of the same detections is a different definition and is
reported beside it (its difference is measured, not bounded, here).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from detkd.eval.api import evaluate_model
from detkd.eval.predict import preprocess_rect, read_image, rect_batches

pytestmark = pytest.mark.slow
TOL = 1e-4


def _yolo_val(weights: Path, data: Path, tmp_path: Path, **kw) -> dict[str, float]:
    from ultralytics import YOLO  # loads the pickle: a checkpoint these tests just trained

    m = YOLO(str(weights)).val(data=str(data), batch=16, device="cpu", plots=False, project=str(tmp_path),
                               name="yolo_val", exist_ok=True, verbose=False, **kw)  # fmt: skip
    return {"precision": m.box.mp, "recall": m.box.mr, "mAP50": m.box.map50, "mAP50-95": m.box.map}


def _padded_copy(data_yaml: Path, out: Path) -> Path:
    """The val split with each image padded to another aspect ratio (wide, tall, square in turn), labels moved."""
    cfg = yaml.safe_load(data_yaml.read_text())
    root = Path(cfg.get("path") or data_yaml.parent)
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    for k, img_path in enumerate(sorted((root / cfg["val"]).glob("*.png")) + sorted((root / cfg["val"]).glob("*.jpg"))):
        img = read_image(img_path)
        h, w = img.shape[:2]
        pad_r, pad_b = [(w // 2, 0), (0, h // 3), (0, 0), (w, h // 4)][k % 4]
        big = cv2.copyMakeBorder(img, 0, pad_b, 0, pad_r, cv2.BORDER_CONSTANT, value=(30, 30, 30))
        cv2.imwrite(str(out / "images" / f"{img_path.stem}.png"), big)
        lines = []
        label = root / cfg["val"].replace("images", "labels") / f"{img_path.stem}.txt"
        for line in label.read_text().split("\n") if label.exists() else []:
            if line.strip():
                c, x, y, bw, bh = (float(v) for v in line.split())
                sx, sy = w / (w + pad_r), h / (h + pad_b)
                lines.append(f"{int(c)} {x * sx:.6f} {y * sy:.6f} {bw * sx:.6f} {bh * sy:.6f}")
        (out / "labels" / f"{img_path.stem}.txt").write_text("\n".join(lines) + "\n")
    data = {"path": str(out), "train": "images", "val": "images", "names": cfg["names"]}
    path = out / "data.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("mixed_aspect", [False, True], ids=["square", "mixed-aspect"])
def test_detkd_eval_reports_what_yolo_val_reports(trained_teacher, shapes_data, tmp_path, mixed_aspect):
    data = _padded_copy(shapes_data, tmp_path / "padded") if mixed_aspect else shapes_data
    ours = evaluate_model(trained_teacher, data, out=tmp_path / "ours", plots=False, progress=False)
    theirs = _yolo_val(trained_teacher, data, tmp_path)
    assert ours.settings["imgsz"] == 64 and ours.settings["letterbox"] == "rect"  # the checkpoint's size
    assert theirs["mAP50-95"] > 0.01  # a model that detects something, so agreement means something
    for key, value in theirs.items():
        assert ours.yolo[key] == pytest.approx(value, abs=TOL), key
    assert ours.map50_95 != pytest.approx(ours.yolo["mAP50-95"], abs=1e-3)  # two definitions, both reported


def test_rect_batches_match_ultralytics_validation_loader(shapes_data, tmp_path):
    """Batch shapes and pixels of detkd's rectangular batches equal those of Ultralytics' own val dataset."""

    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_yolo_dataset

    data = _padded_copy(shapes_data, tmp_path / "padded")
    cfg = yaml.safe_load(data.read_text())
    args = get_cfg(overrides={"imgsz": 64, "rect": True, "task": "detect"})  # as YOLO.val() sets it
    ds = build_yolo_dataset(args, str(Path(cfg["path"]) / "images"), 4, {**cfg, "nc": 1, "channels": 3},
                            mode="val", stride=32)  # fmt: skip
    ours = rect_batches(sorted((Path(cfg["path"]) / "images").glob("*.png")), 64, 4, 32)
    assert [tuple(s) for s in ds.batch_shapes.tolist()] == [s for _, s in ours]
    by_name = {Path(f).name: i for i, f in enumerate(ds.im_files)}
    for paths, shape in ours:
        x, _ = preprocess_rect([read_image(p) for p in paths], 64, shape)
        for j, p in enumerate(paths):
            theirs = ds[by_name[p.name]]["img"].numpy().astype(np.float32) / 255.0  # RGB CHW
            assert theirs.shape == x[j].shape, p.name
            assert np.abs(theirs - x[j]).max() <= 1 / 255 + 1e-6, p.name  # same resize, placement and padding
