"""Unlabeled images: the detection loss reaches them only through their pseudo-labels, and batches mix a fixed
share of them."""

from __future__ import annotations

import pytest
import torch

from detkd.data.soft_labels import MixedBatches
from detkd.offline.unlabeled import add_hard_labels, labelled_only, pseudo_from_soft
from detkd.students import ultralytics_yolo as uy
from detkd.teachers.soft import SoftBoxes


def _student():
    torch.manual_seed(0)
    model = uy.build_student("yolov8n.yaml", 2, {0: "a", 1: "b"})
    from ultralytics.cfg import get_cfg

    model.args = get_cfg()
    return model.train()


def _grads(model, batch, labelled):
    """Gradients of the detection loss on the head's outputs (per image: BatchNorm couples the inputs)."""
    det = uy.AssignedDetectionLoss(model)
    preds = model(batch["img"])
    branches = uy.split_branches(preds)
    raw = branches["one2many"]
    for k in ("boxes", "scores"):
        raw[k].retain_grad()
    with labelled_only(det.losses(), labelled):
        res = det(branches, batch)
    res.loss.sum().backward()
    return raw["boxes"].grad, raw["scores"].grad, res.fg_masks["one2many"]


def _batch():
    img = torch.rand(2, 3, 64, 64)
    return {
        "img": img,
        "cls": torch.tensor([[0.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]]),  # image 0 is labelled with one box
        "batch_idx": torch.tensor([0.0]),
    }


def test_an_unlabeled_image_without_pseudo_labels_gets_no_gradient():
    model = _student()
    labelled = torch.tensor([True, False])
    boxes, scores, _ = _grads(model, _batch(), labelled)
    assert float(scores[0].abs().sum()) > 0 and float(boxes[0].abs().sum()) > 0
    assert float(scores[1].abs().sum()) == 0.0 and float(boxes[1].abs().sum()) == 0.0
    # the same image read as labelled background (Ultralytics' reading of an image without labels) is pushed
    model.zero_grad()
    _, scores_bg, _ = _grads(model, _batch(), None)
    assert float(scores_bg[1].abs().sum()) > 0


def test_an_unlabeled_image_learns_only_at_its_pseudo_labels():
    model = _student()
    batch = _batch()
    soft = SoftBoxes(torch.tensor([[10.0, 10.0, 40.0, 36.0], [5.0, 40.0, 20.0, 60.0]]), torch.tensor([1, 1]),
                     torch.tensor([[0.8, 0.1], [0.3, 0.2]]))  # fmt: skip
    unlabeled = torch.tensor([False, True])
    hard = pseudo_from_soft(soft, unlabeled, torch.tensor([0.5, 0.5]))
    assert add_hard_labels(batch, *hard) == 1  # only the confident box becomes a label
    boxes, scores, fg = _grads(model, batch, ~unlabeled)
    on = fg[1]
    assert bool(on.any())
    assert float(scores[1][:, ~on].abs().sum()) == 0.0  # no background push anywhere else on the image
    assert float(boxes[1][:, ~on].abs().sum()) == 0.0
    assert float(scores[1][:, on].abs().sum()) > 0 and float(boxes[1][:, on].abs().sum()) > 0


def test_labelled_only_restores_the_loss():
    model = _student()
    det = uy.AssignedDetectionLoss(model)
    inner = det.losses()[0]
    before = (inner.assigner, inner.bce)
    with labelled_only(det.losses(), torch.tensor([True, False])):
        assert inner.bce is not before[1]
    assert (inner.assigner, inner.bce) == before


@pytest.mark.parametrize(("fraction", "k"), [(0.25, 2), (0.5, 4), (0.0, 0)])
def test_mixed_batches_hold_a_fixed_share_and_resume_exactly(fraction, k):
    labelled, unlabeled = list(range(20)), list(range(20, 50))
    s = MixedBatches(labelled, unlabeled, 8, fraction, seed=3)
    epoch1 = list(s)
    assert all(sum(i >= 20 for i in b) == k for b in epoch1)
    assert sorted(i for b in epoch1 for i in b if i < 20) == labelled  # one pass over the labelled images
    epoch2 = list(s)
    resumed = MixedBatches(labelled, unlabeled, 8, fraction, seed=3)
    resumed.sampler.passes = 1  # what a resume restores
    assert list(resumed) == epoch2
    if k:  # the unlabeled stream continues across epochs
        first = [i for b in epoch1 for i in b if i >= 20]
        second = [i for b in epoch2 for i in b if i >= 20]
        assert first != second


def test_box_kd_on_unlabeled_images_applies_where_the_teacher_is_confident():
    from detkd.engine.positions import unlabeled_box_masks
    from detkd.types import HeadOutputs, TeacherOutputs

    logits = torch.tensor([[[5.0, -5.0, 5.0]], [[5.0, -5.0, 5.0]]])  # (B=2, nc=1, A=3): anchors 0 and 2 confident
    head = HeadOutputs(logits, torch.zeros(2, 4, 3), 1, torch.zeros(3, 2), torch.ones(3, 1))
    teacher = TeacherOutputs([], [], {"one2many": head})
    fg = {"one2many": torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])}
    out = unlabeled_box_masks(fg, "assigner", 0.3, teacher, torch.tensor([True, False]))
    assert out["one2many"].tolist() == [
        [0.0, 1.0, 0.0],
        [1.0, 0.0, 1.0],
    ]  # labelled: the assigner's; unlabeled: +teacher
    assert unlabeled_box_masks(fg, "assigner", 0.3, teacher, None) is fg
