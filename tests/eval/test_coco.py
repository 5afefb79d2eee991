import json

import numpy as np
import pytest

from detkd.data.checks import validate_split
from detkd.data.coco import ground_truth_for_split, yolo_to_coco
from detkd.data.dataset import list_images, load_data_spec
from detkd.errors import InputFileError
from detkd.eval.coco import coco_metrics, evaluate
from detkd.eval.predict import LetterboxMeta, letterbox, postprocess

GT = {
    "images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 100}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "thing"}],
}


def _det(bbox, score):
    return {"image_id": 1, "category_id": 1, "bbox": bbox, "score": score}


def test_perfect_predictions_give_ap_one():
    metrics, per_class, _ = coco_metrics(GT, [_det([10, 10, 20, 20], 0.9), _det([50, 50, 30, 30], 0.8)], {1: "thing"})
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert per_class["thing"] == pytest.approx(1.0)
    assert metrics["APl"] is None  # no large objects in the ground truth


def test_no_predictions_give_zero():
    metrics, per_class, _ = coco_metrics(GT, [], {1: "thing"})
    assert metrics["AP"] == 0.0 and per_class["thing"] == 0.0
    metrics, _, _ = coco_metrics(GT, [_det([0, 80, 5, 5], 0.9)], {1: "thing"})
    assert metrics["AP"] == 0.0


def test_hand_computed_case():
    # One hit (score 0.9), one false positive (0.8), one object missed: precision 1 up to recall 0.5, then 0.
    # COCO interpolates at 101 recall points, 51 of which (0.00..0.50) have precision 1: AP = 51 / 101.
    dets = [_det([10, 10, 20, 20], 0.9), _det([0, 80, 5, 5], 0.8)]
    metrics, _, _ = coco_metrics(GT, dets, {1: "thing"})
    assert metrics["AP"] == pytest.approx(51 / 101, abs=1e-6)
    assert metrics["AP50"] == pytest.approx(51 / 101, abs=1e-6)


def test_letterbox_and_postprocess_map_boxes_back():
    img = np.zeros((50, 100, 3), np.uint8)
    boxed, meta = letterbox(img, 64)
    assert boxed.shape == (64, 64, 3) and meta.ratio == 0.64 and meta.top == 16 and meta.left == 0
    # one anchor predicting class 1 with a box centred at (32, 32) of 16x16 input pixels
    raw = np.zeros((1, 4 + 2, 1), np.float32)
    raw[0, :4, 0] = [32, 32, 16, 16]
    raw[0, 5, 0] = 0.9
    (det,) = postprocess(raw, [meta])
    x1, y1, x2, y2, score, cls = det[0]
    assert (x1, y1, x2, y2) == pytest.approx(((24 - 0) / 0.64, (24 - 16) / 0.64, 40 / 0.64, (40 - 16) / 0.64))
    assert score == pytest.approx(0.9) and cls == 1


def test_postprocess_nms_and_end2end():
    raw = np.zeros((1, 5, 3), np.float32)
    raw[0, :4] = np.array([[10, 10.5, 40], [10, 10, 40], [8, 8, 8], [8, 8, 8]], np.float32)
    raw[0, 4] = [0.9, 0.8, 0.7]
    meta = LetterboxMeta(1.0, 0, 0, 64, 64)
    (det,) = postprocess(raw, [meta], iou=0.5)
    assert len(det) == 2  # the two overlapping boxes merge
    e2e = np.array([[[1, 1, 5, 5, 0.9, 0], [2, 2, 6, 6, 0.0005, 0]]], np.float32)
    (det,) = postprocess(e2e, [meta], end2end=True)
    assert len(det) == 1 and det[0, 4] == pytest.approx(0.9)


class _OraclePredictor:
    """Returns the ground truth of the images it was built for, in the network's raw output format."""

    name = "oracle"
    max_batch = None
    end2end = True

    def __init__(self, spec, imgsz):
        from detkd.data.checks import check_label_file
        from detkd.data.split_lists import label_path_for

        self.rows = [check_label_file(label_path_for(p), spec.nc).rows for p in list_images(spec, "val")]
        self.imgsz, self.i = imgsz, 0

    def __call__(self, x):
        out = np.zeros((len(x), 300, 6), np.float32)
        for b in range(len(x)):
            for k, (cls, cx, cy, w, h) in enumerate(self.rows[self.i]):
                s = self.imgsz
                out[b, k] = [(cx - w / 2) * s, (cy - h / 2) * s, (cx + w / 2) * s, (cy + h / 2) * s, 1.0, cls]
            self.i += 1
        return out


def test_evaluate_end_to_end_with_oracle_gives_one(tiny_data):
    spec = load_data_spec(tiny_data)
    res = evaluate(_OraclePredictor(spec, 64), spec, "val", imgsz=64, batch=4)
    assert res.metrics["AP"] == pytest.approx(1.0, abs=1e-3)
    assert res.images == 6 and res.images_per_second > 0 and "official json" in res.ground_truth


def test_yolo_conversion_uses_explicit_category_map(tiny_data):
    spec = load_data_spec(tiny_data)
    gt, cmap = yolo_to_coco(validate_split(spec, "val").samples, spec.names)
    assert cmap == {i: i + 1 for i in range(6)}
    official = json.loads((tiny_data.parent / "annotations" / "instances_val.json").read_text())
    assert len(gt["annotations"]) == len(official["annotations"])
    for a, b in zip(
        sorted(gt["annotations"], key=lambda a: (a["image_id"], a["bbox"])),
        sorted(official["annotations"], key=lambda a: (a["image_id"], a["bbox"])),
    ):
        assert a["category_id"] == b["category_id"]
        assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3)


def test_official_json_category_names_must_match(tiny_data, tmp_path):
    import shutil

    root = tmp_path / "ds"
    shutil.copytree(tiny_data.parent, root)
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [a, b, c, d, e, f]\n")
    with pytest.raises(InputFileError, match="category names do not match"):
        ground_truth_for_split(load_data_spec(root / "data.yaml"), "val")
    (root / "annotations" / "instances_val.json").unlink()
    _, _, _, source = ground_truth_for_split(load_data_spec(root / "data.yaml"), "val")
    assert "converted from YOLO labels" in source
