"""Ultralytics RT-DETR as a teacher: decoder-input features and query predictions as dense targets."""

import pytest
import torch

from detkd.teachers import build_teacher, detect_family
from detkd.teachers.rtdetr import RTDETRTeacher
from tests.helpers import tiny_distill

NAMES = {0: "a", 1: "b", 2: "c"}


@pytest.fixture(scope="module")
def teacher():
    return build_teacher("rtdetr-l.yaml", nc=3, names=NAMES)


def test_rtdetr_teacher_outputs(teacher):
    assert isinstance(teacher, RTDETRTeacher) and detect_family("rtdetr-l.yaml") == "rtdetr"
    assert [(s.channels, s.stride) for s in teacher.specs] == [(256, 8), (256, 16), (256, 32)]
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    out = teacher(torch.rand(2, 3, 64, 96))
    assert [tuple(f.shape) for f in out.features] == [(2, 256, 8, 12), (2, 256, 4, 6), (2, 256, 2, 3)]
    head = out.heads["one2many"]
    assert head.cls_logits.shape == (2, 3, 96 + 24 + 6) and head.reg_max == 1 and head.box_valid is not None
    assert teacher.names == NAMES and "RT-DETR" in teacher.describe()


def test_queries_become_soft_class_vectors(teacher, monkeypatch):
    """A query covering the whole image with class vector (0.9, 0.2, 0.6) is every point's soft target."""
    boxes = torch.tensor([[[0.5, 0.5, 1.0, 1.0], [0.2, 0.2, 0.1, 0.1]]])  # normalised cxcywh
    logits = torch.logit(torch.tensor([[[0.9, 0.2, 0.6], [0.01, 0.02, 0.03]]]))  # second query below MIN_SCORE
    monkeypatch.setattr(teacher, "_run", lambda images: ([torch.zeros(1, 256, 8, 8)] * 3, (boxes, logits)))
    head = teacher(torch.zeros(1, 3, 64, 64)).heads["one2many"]
    probs = head.cls_logits.sigmoid()[0]
    torch.testing.assert_close(probs[:, 0], torch.tensor([0.9, 0.2, 0.6]))
    assert torch.allclose(probs, probs[:, :1].expand_as(probs)) and head.box_valid.all()
    torch.testing.assert_close(head.boxes_xyxy()[0, :, 5], torch.tensor([0.0, 0.0, 64.0, 64.0]))


def test_rtdetr_checkpoint_is_detected_and_loaded_safely(tmp_path):
    from detkd.teachers.rtdetr import load_rtdetr_model

    path = tmp_path / "rtdetr.pt"
    torch.save({"model": load_rtdetr_model("rtdetr-l.yaml", 3, NAMES)}, path)
    assert detect_family(path) == "rtdetr"
    loaded = build_teacher(path)
    assert isinstance(loaded, RTDETRTeacher) and loaded.num_classes == 3


@pytest.mark.slow
def test_distill_from_an_rtdetr_teacher(tiny_data, tmp_path):
    from detkd.engine.distiller import Distiller

    d = Distiller("rtdetr-l.yaml", "yolov8n.yaml", tiny_data, overrides=["feature.method=pkd"])
    last = tiny_distill(d, tmp_path)
    assert last["train/kd/feat"] > 0 and last["train/kd/cls"] > 0 and last["train/kd/box"] > 0
