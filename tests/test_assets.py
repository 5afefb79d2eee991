"""Integration with the shared real assets (skipped, with the reason, when ../shared/assets is absent)."""

import pytest

from detkd.data.checks import validate_split
from detkd.data.coco import ground_truth_for_split
from detkd.data.dataset import load_data_spec
from detkd.eval.coco import evaluate
from detkd.eval.predict import TorchPredictor
from detkd.students import ultralytics_yolo as uy

from .conftest import assets_path

pytestmark = pytest.mark.assets


def test_coco_tiny_official_json_maps_all_80_classes():
    spec = load_data_spec(assets_path("coco_tiny", "coco_tiny.yaml"))
    _, cmap, images, source = ground_truth_for_split(spec, "val")
    assert "instances_val2017.json" in source and len(images) == 80
    assert cmap[0] == 1 and cmap[79] == 90  # COCO's non-contiguous category ids, matched by name
    assert len(set(cmap.values())) == 80


def test_eval_runs_on_real_images_with_the_official_json():
    spec = load_data_spec(assets_path("coco_tiny", "coco_tiny.yaml"))
    model = uy.build_model_from_yaml("yolov8n.yaml", spec.nc, spec.names)  # untrained: the pipeline, not accuracy
    res = evaluate(TorchPredictor(model), spec, "val", imgsz=96, batch=16)
    assert res.images == 80 and 0.0 <= res.metrics["AP"] < 0.05


def test_hit_uav_validates():
    spec = load_data_spec(assets_path("hit_uav", "hit_uav.yaml"))
    rep = validate_split(spec, "val")
    assert spec.names[0] == "Person" and rep.images == 290 and rep.boxes == 2453
    assert not rep.skipped and not rep.orphan_labels
