import pytest
import torch

from detkd.engine.distiller import train_detector
from detkd.students.ultralytics_yolo import load_detection_model

pytestmark = pytest.mark.slow


def test_same_seed_gives_the_same_trained_weights(tiny_data, tmp_path):
    args = {"epochs": 1, "imgsz": 64, "batch": 4, "device": "cpu", "seed": 7, "project": tmp_path}
    a = train_detector("yolov8n.yaml", tiny_data, name="a", **args)
    torch.rand(100)  # the global RNG history between runs must not matter
    b = train_detector("yolov8n.yaml", tiny_data, name="b", **args)
    sa = load_detection_model(a.last).state_dict()
    sb = load_detection_model(b.last).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
