"""Ensembles of teachers of different families, fused into one teacher."""

import pytest
import torch

from detkd.errors import ConfigError, PairingError
from detkd.teachers import build_teacher, detect_family
from detkd.teachers.ensemble import EnsembleTeacher, fuse_heads
from detkd.types import HeadOutputs
from tests.helpers import tiny_distill

NAMES = {0: "a", 1: "b", 2: "c"}


def _head(probs, dist, mask=None, valid=None):
    p = torch.tensor(probs).view(1, -1, 1)
    return HeadOutputs(torch.logit(p), torch.tensor(dist, dtype=torch.float32).view(1, 4, 1), 1, torch.zeros(1, 2),
                       torch.ones(1, 1), class_mask=mask, box_valid=valid)  # fmt: skip


def test_mean_and_max_fusion_respect_weights_and_missing_classes():
    a = _head([0.8, 0.5, 0.1], [1, 1, 1, 1])
    b = _head([0.2, 0.9, 0.7], [3, 3, 3, 3], mask=torch.tensor([1.0, 1.0, 0.0]), valid=torch.zeros(1, 1))
    mean = fuse_heads([a, b], [3.0, 1.0], "mean")
    torch.testing.assert_close(mean.cls_logits.sigmoid()[0, :, 0], torch.tensor([0.65, 0.6, 0.1]))  # c: a alone
    assert mean.box_raw[0, :, 0].tolist() == [1.0, 1.0, 1.0, 1.0]  # b has no box there
    mx = fuse_heads([a, b], [3.0, 1.0], "max")
    torch.testing.assert_close(mx.cls_logits.sigmoid()[0, :, 0], torch.tensor([0.8, 0.9, 0.1]))
    assert mean.class_mask.tolist() == [1.0, 1.0, 1.0] and mean.box_valid.tolist() == [[1.0]]


def test_dfl_members_are_fused_as_distances():
    from detkd.types import dfl_expectation

    raw = torch.randn(1, 4 * 16, 1)
    dfl = HeadOutputs(torch.zeros(1, 3, 1), raw, 16, torch.zeros(1, 2), torch.ones(1, 1))
    out = fuse_heads([dfl], [1.0], "mean")
    torch.testing.assert_close(out.box_raw, dfl_expectation(raw, 16))
    assert out.reg_max == 1


def _write(tmp_path, text):
    path = tmp_path / "ensemble.yaml"
    path.write_text(text)
    return path


def test_ensemble_of_three_families(tmp_path, tiny_data):
    from detkd.data.dataset import load_data_spec

    names = load_data_spec(tiny_data).names
    cmap = tmp_path / "tv_map.yaml"
    cmap.write_text("map:\n  person: disk\n  car: ring\n")
    path = _write(tmp_path, (
        "ensemble:\n  fuse: max\n  features_from: 1\n  members:\n"
        "    - {teacher: yolov8s.yaml, weight: 2}\n"
        "    - {teacher: rtdetr-l.yaml}\n"
        "    - {teacher: 'torchvision:fcos_resnet50_fpn', class_map: tv_map.yaml}\n"
    ))  # fmt: skip
    assert detect_family(path) == "ensemble"
    teacher = build_teacher(path, nc=len(names), names=names)
    assert isinstance(teacher, EnsembleTeacher) and teacher.names == names
    assert [s.channels for s in teacher.specs] == [256, 256, 256]  # the RT-DETR member's features
    out = teacher(torch.rand(2, 3, 64, 64))
    assert out.heads["one2many"].cls_logits.shape == (2, 6, 64 + 16 + 4)
    assert "ensemble, fuse=max" in teacher.describe()


@pytest.mark.parametrize(
    ("text", "error", "message"),
    [
        ("ensemble: {members: []}\n", ConfigError, "expected 'members:'"),
        ("ensemble: {members: [{teacher: yolov8n.yaml, weight: -1}]}\n", ConfigError, "weight: -1 must be"),
        ("ensemble: {fuse: vote, members: [{teacher: yolov8n.yaml}]}\n", ConfigError, "fuse: 'vote' is not one"),
        ("ensemble: {members: [{teacher: yolov8n.yaml}], features_from: 3}\n", ConfigError, "features_from: 3"),
        ("ensemble: {members: [{model: yolov8n.yaml}]}\n", ConfigError, "members\\[0\\]: expected"),
        ("ensemble: {members: [{teacher: yolov8n.yaml}], vote: 1}\n", ConfigError, "unknown keys \\['vote'\\]"),
        ("ensemble: {members: [{teacher: yolov8n.yaml}, {teacher: 'torchvision:fasterrcnn_resnet50_fpn'}]}\n",
         PairingError, "not the data's"),
    ],
)  # fmt: skip
def test_bad_ensembles_are_clear_errors(tmp_path, text, error, message):
    with pytest.raises(error, match=message):
        build_teacher(_write(tmp_path, text), nc=3, names=NAMES)


@pytest.mark.slow
def test_distill_from_an_ensemble(tiny_data, tmp_path):
    from detkd.engine.distiller import Distiller

    path = _write(tmp_path, "ensemble:\n  members:\n    - {teacher: yolov8s.yaml}\n    - {teacher: yolo11s.yaml}\n")
    d = Distiller(path, "yolov8n.yaml", tiny_data)
    assert d.composite.box_method == "iou"
    last = tiny_distill(d, tmp_path)
    assert last["train/kd/feat"] > 0 and last["train/kd/cls"] > 0 and last["train/kd/box"] > 0
