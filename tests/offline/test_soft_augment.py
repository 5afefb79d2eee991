"""Soft boxes travel through Ultralytics' augmentation as ground-truth rows do, and come out where their objects are.

The cache here holds each image's ground truth as its soft boxes, so after mosaic, random affine, flips and
letterbox every soft box must coincide with a ground-truth box of the same training image, and its id must still
name the object it came from.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from detkd.data.soft_labels import split_soft
from detkd.offline.cache import TeacherCache
from detkd.offline.teacher import CachedTeacher
from detkd.teachers.soft import soft_to_dense
from detkd.types import FeatureSpec
from tests.offline.conftest import BINS, training_dataset

SPECS = [FeatureSpec(64, 8), FeatureSpec(128, 16), FeatureSpec(256, 32)]


def _batches(ds, n=3):
    loader = DataLoader(ds, batch_size=8, shuffle=False, collate_fn=ds.collate_fn)
    out = []
    for i, b in enumerate(loader):
        if i >= n:
            break
        out.append(split_soft(b))
    return out


def _match(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same set of boxes (rows), in any order."""
    if a.shape != b.shape:
        return False
    a = a[torch.argsort(a[:, 0] * 1e4 + a[:, 1])]
    b = b[torch.argsort(b[:, 0] * 1e4 + b[:, 1])]
    return torch.allclose(a, b, atol=1e-4)


HYPS = [
    {"mosaic": 1.0, "fliplr": 0.5},
    {"mosaic": 0.0, "fliplr": 1.0, "scale": 0.5},
    {"mosaic": 1.0, "fliplr": 0.5, "degrees": 0.0, "translate": 0.3, "mixup": 0.5},
]


@pytest.mark.parametrize("hyp", HYPS)
def test_soft_boxes_land_on_the_objects_they_came_from(shapes_data, shapes_gt_cache, hyp):
    import random

    random.seed(0)
    np.random.seed(0)
    ds = training_dataset(shapes_data, shapes_gt_cache, **hyp)
    cache = TeacherCache(shapes_gt_cache)
    checked = 0
    for batch in _batches(ds):
        assert (batch["cls"] >= 0).all() and batch["cls"].dtype == torch.float32  # no soft row reaches the loss
        for i in range(batch["img"].shape[0]):
            gt = batch["bboxes"][batch["batch_idx"] == i]
            soft = batch["soft_bboxes"][batch["soft_batch_idx"] == i]
            assert _match(gt, soft), f"image {i}: soft boxes {soft.tolist()} vs ground truth {gt.tolist()}"
            checked += len(gt)
        # each id still names its object: the cached (original) box has the augmented box's aspect ratio
        orig = torch.as_tensor(cache.payload(batch["soft_ids"].numpy())["boxes"])
        ow, oh = orig[:, 2] - orig[:, 0], orig[:, 3] - orig[:, 1]
        aw, ah = batch["soft_bboxes"][:, 2] * 64, batch["soft_bboxes"][:, 3] * 64
        unclipped = (batch["soft_bboxes"][:, :2] - batch["soft_bboxes"][:, 2:] / 2 > 0.01).all(1) & (
            batch["soft_bboxes"][:, :2] + batch["soft_bboxes"][:, 2:] / 2 < 0.99
        ).all(1)
        ratio = (aw / ow)[unclipped] / (ah / oh)[unclipped]
        if hyp.get("mixup", 0) == 0:  # mixup blends two images at one scale; boxes keep theirs either way
            assert torch.allclose(ratio, torch.ones_like(ratio), atol=0.1)
    assert checked > 20


def _side_spread(dense, box_xyxy, image):
    """Variance of each side's target distribution at the anchor nearest the box centre (stride 8)."""
    centre = (box_xyxy[:2] + box_xyxy[2:]) / 2
    pts = dense.anchor_points * dense.stride_tensor
    level = dense.stride_tensor.view(-1) == 8
    d = ((pts - centre) ** 2).sum(1) + (~level) * 1e9
    a = int(d.argmin())
    p = dense.box_raw[image, :, a].view(4, BINS).softmax(dim=1)
    bins = torch.arange(BINS, dtype=p.dtype)
    mean = (p * bins).sum(1, keepdim=True)
    return ((bins - mean) ** 2 * p).sum(1)


@pytest.mark.parametrize("cells", [False, True], ids=["soft-boxes", "cells"])
@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_a_flip_moves_each_side_distribution_to_the_mirrored_side(shapes_data, shapes_gt_cache, shapes_cell_cache,
                                                                  flip, cells):  # fmt: skip
    """The cache's left edges are broad and its right edges sharp; after a left-right flip the right ones are (box
    targets from soft boxes, and from the cells' own boxes, which win at the anchors they reach)."""
    cache = shapes_cell_cache if cells else shapes_gt_cache
    ds = training_dataset(shapes_data, cache, mosaic=0.0, fliplr=flip, scale=0.0, translate=0.0)
    teacher = CachedTeacher(TeacherCache(cache), SPECS)
    teacher.cell_boxes = cells
    batch = _batches(ds, 1)[0]
    batch["img"] = batch["img"].float() / 255
    assert bool(batch["soft_flips"][:, 0].all()) == (flip == 1.0)
    dense = teacher.from_batch(batch).heads["one2many"]
    soft = teacher.soft_boxes(batch)
    seen = 0
    for box, i in zip(soft.boxes, soft.batch_idx):
        if (box[2:] - box[:2]).min() < 24:  # the spread must fit inside the box at the centre anchor
            continue
        spread = _side_spread(dense, box, int(i))
        left, right = float(spread[0]), float(spread[2])
        if flip:
            assert right > 4 * max(left, 0.05), (left, right)
        else:
            assert left > 4 * max(right, 0.05), (left, right)
        seen += 1
    assert seen > 0


def test_dense_targets_give_back_the_predicting_anchor_distribution():
    """In the teacher's own frame, at the anchor that predicted a box, the re-binned target is its distribution."""
    from detkd.teachers.soft import SoftBoxes

    dist = torch.zeros(1, 4, BINS)
    dist[0, :, 3], dist[0, :, 4] = 0.25, 0.75  # mean 3.75 bins on every side
    anchor, stride = torch.tensor([20.0, 20.0]), 8.0  # cell (2, 2) of stride 8
    d = 3.75 * stride
    box = torch.tensor([[anchor[0] - d, anchor[1] - d, anchor[0] + d, anchor[1] + d]])
    soft = SoftBoxes(box, torch.tensor([0]), torch.tensor([[0.8]]), dist, torch.tensor([[stride, stride]]))
    dense = soft_to_dense(soft, 1, (64, 64), (8,), reg_max=BINS)
    a = 2 * 8 + 2
    got = dense.box_raw[0, :, a].view(4, BINS).softmax(dim=1)
    assert torch.allclose(got, dist[0], atol=1e-4)


def test_the_level_prior_prefers_the_level_the_teacher_predicted_from():
    from detkd.teachers.soft import SoftBoxes

    box = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    soft = SoftBoxes(box, torch.tensor([0]), torch.tensor([[0.8]]), None, torch.tensor([[16.0, 16.0]]))
    plain = soft_to_dense(soft, 1, (64, 64), (8, 16, 32))
    prior = soft_to_dense(soft, 1, (64, 64), (8, 16, 32), level_tau=0.5)
    st = plain.stride_tensor.view(-1)
    p_plain, p_prior = plain.cls_logits.sigmoid()[0, 0], prior.cls_logits.sigmoid()[0, 0]
    assert torch.allclose(p_plain, torch.full_like(p_plain, 0.8))
    assert torch.allclose(p_prior[st == 16], torch.full_like(p_prior[st == 16], 0.8))
    assert float(p_prior[st == 8].max()) < 0.2 and float(p_prior[st == 32].max()) < 0.2


@pytest.mark.parametrize("hyp", HYPS[:2])
def test_score_cells_travel_with_their_objects_and_keep_their_stride(shapes_data, shapes_cell_cache, hyp):
    """The cache's cells sit at its boxes' centres with stride 8: after mosaic / scale / flips each cell that no
    border cut is centred on its box again, and its size is 8 times the scale the box took; painted onto the
    student's grid, the field peaks at the anchor nearest each object's centre on the level nearest that size."""
    import random

    from detkd.offline.cache import is_cell
    from detkd.teachers.soft import paint_field

    random.seed(1)
    np.random.seed(1)
    ds = training_dataset(shapes_data, shapes_cell_cache, **hyp)
    teacher = CachedTeacher(TeacherCache(shapes_cell_cache), SPECS)
    checked = 0
    for batch in _batches(ds, 5):
        batch["img"] = batch["img"].float() / 255
        ids = batch["soft_ids"]
        cell = torch.as_tensor(is_cell(ids.numpy()))
        xyxy = torch.cat((batch["soft_bboxes"][:, :2] - batch["soft_bboxes"][:, 2:] / 2,
                          batch["soft_bboxes"][:, :2] + batch["soft_bboxes"][:, 2:] / 2), 1) * 64  # fmt: skip
        whole = ((xyxy[:, :2] > 0.5) & (xyxy[:, 2:] < 63.5)).all(1)  # no border or crop cut this row
        field = teacher.score_field(batch)
        assert field is not None and len(field) == int(cell.sum()) > 0
        probs = paint_field(field, batch["img"].shape[0], (64, 64), (8, 16, 32))
        dense = teacher.from_batch(batch).heads["one2many"]
        anchors = dense.anchor_points * dense.stride_tensor
        box_rows = {(int(i), int(r)): k for k, (i, r) in enumerate(zip(batch["soft_batch_idx"], ids)) if not cell[k]}
        cell_rows = torch.nonzero(cell).squeeze(1)
        for j, k in enumerate(cell_rows.tolist()):
            i = int(batch["soft_batch_idx"][k])
            box = box_rows.get((i, int(ids[k]) - (1 << 31)))  # the gt cache's cell r belongs to its box r
            if box is None or not (whole[k] and whole[box]):
                continue
            orig = torch.as_tensor(teacher.cache.payload(ids[box : box + 1].numpy())["boxes"][0])
            grew = (xyxy[box, 2:] - xyxy[box, :2]) / (orig[2:] - orig[:2])
            cell_wh = xyxy[k, 2:] - xyxy[k, :2]
            if abs(float(grew[0] / grew[1]) - 1) > 0.02 or abs(float(cell_wh[0] / cell_wh[1]) - 1) > 0.02:
                continue  # cut by a clip before the final frame (mosaic's canvas)
            p, size = field.points[j], field.size[j]
            assert torch.allclose(p, (xyxy[box, :2] + xyxy[box, 2:]) / 2, atol=0.05)
            assert abs(float(size) - 8 * float(grew[0])) < 0.05 * 8 * float(grew[0])
            level = SPECS[int((torch.log2(size / torch.tensor([8.0, 16.0, 32.0]))).abs().argmin())].stride
            on_level = dense.stride_tensor.view(-1) == level
            nearest = int(((anchors - p).norm(dim=1) + (~on_level) * 1e9).argmin())
            assert float(probs[i, :, nearest].max()) >= 0.89
            checked += 1
    assert checked > 10
