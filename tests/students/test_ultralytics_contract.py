"""Contract with the installed Ultralytics: the Detect head's outputs in train, eval and end-to-end modes."""

import pytest
import torch

from detkd.students import ultralytics_yolo as uy

NAMES = {i: f"c{i}" for i in range(3)}
IMGSZ = 64


@pytest.fixture(scope="module", params=["yolov8n.yaml", "yolo11n.yaml", "yolo26n.yaml"])
def model(request):
    return uy.build_model_from_yaml(request.param, 3, NAMES)


def test_feature_specs_match_train_outputs(model):
    specs = uy.feature_specs(model)
    assert [s.stride for s in specs] == [8, 16, 32]
    model.train()
    preds = model(torch.zeros(2, 3, IMGSZ, IMGSZ))
    feats = uy.neck_features(preds)
    assert [f.shape[1] for f in feats] == [s.channels for s in specs]
    assert [f.shape[-1] for f in feats] == [IMGSZ // s.stride for s in specs]


def test_head_outputs_shapes_in_train_mode(model):
    model.train()
    preds = model(torch.zeros(2, 3, IMGSZ, IMGSZ))
    branches = uy.split_branches(preds)
    expected = {"one2many", "one2one"} if uy.is_end2end(model) else {"one2many"}
    assert set(branches) == expected
    anchors = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))
    head = uy.detect_head(model)
    for raw in branches.values():
        out = uy.head_outputs(raw, head)
        assert out.cls_logits.shape == (2, 3, anchors)
        assert out.box_raw.shape == (2, 4 * out.reg_max, anchors)
        assert out.anchor_points.shape == (anchors, 2) and out.stride_tensor.shape == (anchors, 1)
        assert out.boxes_xyxy().shape == (2, 4, anchors)
    assert uy.reg_max(model) == (1 if "yolo26" in model.yaml["yaml_file"] else 16)


def test_eval_mode_gives_decoded_predictions_and_same_features(model):
    model.eval()
    x = torch.rand(1, 3, IMGSZ, IMGSZ)
    with torch.no_grad():
        out = model(x)
        raw = uy.inference_output(model, x)
    assert isinstance(out, tuple)
    anchors = sum((IMGSZ // s) ** 2 for s in (8, 16, 32))
    assert raw.shape == (1, 4 + 3, anchors)  # NMS outside the graph unless end2end mode is switched on
    assert len(uy.neck_features(out)) == 3
    model.train()


def test_detection_loss_keeps_assigner_foreground(model):
    model.train()
    model.args = __import__("ultralytics.cfg", fromlist=["get_cfg"]).get_cfg()
    preds = model(torch.rand(2, 3, IMGSZ, IMGSZ))
    batch = {
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[0.0], [2.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2]]),
        "img": torch.zeros(2, 3, IMGSZ, IMGSZ),
    }
    res = uy.AssignedDetectionLoss(model)(uy.split_branches(preds), batch)
    assert res.loss.shape == (3,) and torch.isfinite(res.loss).all()
    for name, fg in res.fg_masks.items():
        assert fg.dtype == torch.bool and fg.shape == (2, sum((IMGSZ // s) ** 2 for s in (8, 16, 32)))
        assert fg.any(), f"assigner found no foreground on branch {name}"
    assert set(res.items) >= {"box_loss", "cls_loss"}


def test_non_detection_models_are_refused():
    seg = uy.DetectionModel("yolov8n-seg.yaml", nc=3, verbose=False)
    with pytest.raises(uy.DetkdError, match="expected an Ultralytics detection model with a Detect head, got Segment"):
        uy.detect_head(seg, "seg.pt")


def test_missing_yaml_is_a_clear_error():
    with pytest.raises(uy.InputFileError, match="model YAML not found"):
        uy.build_model_from_yaml("no_such_model.yaml", 3, NAMES)
