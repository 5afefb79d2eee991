"""Relation KD: its properties, a reference value computed independently (NumPy), and the teacher's instances."""

import numpy as np
import pytest
import torch

from detkd.losses.relation import (
    instance_embeddings,
    instance_relation_loss,
    level_relation_loss,
    pair_relation,
    relation_kd,
    teacher_instances,
)
from detkd.types import HeadOutputs

BOXES = torch.tensor([[0.0, 0.0, 16.0, 16.0], [16.0, 8.0, 32.0, 32.0], [4.0, 20.0, 28.0, 30.0], [8.0, 8.0, 24.0, 24.0]])
INDEX = torch.tensor([0, 0, 0, 1])  # image 1 has one instance: no relation there


def _pyramid(seed: int, channels=(4, 6), batch=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, 32 // s, 32 // s, generator=g, dtype=torch.float64) for c, s in zip(channels, (4, 8))]


@pytest.mark.parametrize("distance", ["distance", "cosine"])
def test_zero_for_the_teacher_itself_and_any_positive_multiple(distance):
    t = _pyramid(0)
    for scale in (1.0, 1e-4, 7.0):
        total, parts = relation_kd([scale * x for x in t], t, BOXES, INDEX, [4.0, 8.0], distance=distance)
        assert float(total) == pytest.approx(0.0, abs=1e-12) and set(parts) == {"l0", "l1", "levels"}


@pytest.mark.parametrize("distance", ["distance", "cosine"])
def test_channels_need_not_match_and_gradient_reaches_only_the_student(distance):
    t = _pyramid(1, channels=(16, 32))
    s = [x.requires_grad_(True) for x in _pyramid(2, channels=(4, 6))]
    teacher = [x.requires_grad_(True) for x in t]
    total, _ = relation_kd(s, teacher, BOXES, INDEX, [4.0, 8.0], distance=distance)
    assert float(total.detach()) > 0
    total.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in teacher)


def test_descent_on_the_loss_makes_the_student_relations_the_teachers():
    t = _pyramid(3, channels=(8, 8))
    s = [x.clone().requires_grad_(True) for x in _pyramid(4, channels=(8, 8))]
    opt = torch.optim.Adam(s, lr=0.05)
    first = None
    for _ in range(150):
        opt.zero_grad()
        total, _ = relation_kd(s, t, BOXES, INDEX, [4.0, 8.0], distance="cosine")
        first = float(total) if first is None else first
        total.backward()
        opt.step()
    assert float(total) < 0.05 * first


def test_images_with_fewer_than_two_instances_add_nothing():
    s, t = _pyramid(5), _pyramid(6)
    lone = instance_relation_loss(s[0], t[0], BOXES[3:], INDEX[3:], 4.0)
    assert float(lone) == 0.0 and lone.requires_grad is False  # no graph needed for a constant student
    x = s[0].clone().requires_grad_(True)
    zero = instance_relation_loss(x, t[0], BOXES[3:], INDEX[3:], 4.0)
    zero.backward()  # still on the student's graph
    assert float(zero) == 0.0 and x.grad is not None
    assert float(level_relation_loss(s[:1], t[:1])) == 0.0  # one level: no relation between levels


def _roi_mean(m: np.ndarray, box: np.ndarray, stride: float) -> np.ndarray:
    """RoIAlign to 1x1 with sampling ratio 2, aligned: the mean of 4 bilinear samples (NumPy, for the oracle)."""
    x1, y1, x2, y2 = box / stride - 0.5
    bw, bh = (x2 - x1) / 2, (y2 - y1) / 2  # 2 x 2 sample grid inside the one output bin
    h, w = m.shape[1:]
    out = np.zeros(m.shape[0])
    for iy in range(2):
        for ix in range(2):
            y, x = y1 + (iy + 0.5) * bh, x1 + (ix + 0.5) * bw
            y, x = min(max(y, 0.0), h - 1), min(max(x, 0.0), w - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1_, x1_ = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            ly, lx = y - y0, x - x0
            out += (
                m[:, y0, x0] * (1 - ly) * (1 - lx)
                + m[:, y0, x1_] * (1 - ly) * lx
                + m[:, y1_, x0] * ly * (1 - lx)
                + m[:, y1_, x1_] * ly * lx
            )
    return out / 4


def _oracle(s_maps, t_maps, boxes, index, strides):
    """relation_kd (distance, level_weight 1) written out in NumPy from the documented formula."""

    def dist_rel(e):
        d = np.sqrt(((e[:, None] - e[None]) ** 2).sum(-1))
        off = ~np.eye(len(e), dtype=bool)
        return d / d[off].mean(), off

    def smooth_l1(x):
        return np.where(np.abs(x) < 1, 0.5 * x**2, np.abs(x) - 0.5)

    inst = []
    for sm, tm, st in zip(s_maps, t_maps, strides):
        per_image = []
        for b in np.unique(index):
            idx = np.nonzero(index == b)[0]
            if len(idx) < 2:
                continue
            es = np.stack([_roi_mean(sm[b], boxes[i], st) for i in idx])
            et = np.stack([_roi_mean(tm[b], boxes[i], st) for i in idx])
            (ds, off), (dt, _) = dist_rel(es), dist_rel(et)
            per_image.append(smooth_l1(ds[off] - dt[off]).mean())
        inst.append(np.mean(per_image))

    def level_rel(maps):
        h = min(m.shape[-2] for m in maps)
        a = []
        for m in maps:
            e = (m**2).mean(1)  # (B, H, W)
            k = e.shape[-1] // h
            a.append(e.reshape(e.shape[0], h, k, h, k).mean((2, 4)).reshape(e.shape[0], -1))
        a = np.stack(a, 1)
        a = a - a.mean(2, keepdims=True)
        a = a / np.linalg.norm(a, axis=2, keepdims=True)
        return a @ a.transpose(0, 2, 1)

    rs, rt = level_rel(s_maps), level_rel(t_maps)
    off = ~np.eye(len(s_maps), dtype=bool)
    return float(np.mean(inst) + ((rs[:, off] - rt[:, off]) ** 2).mean())


def test_reference_value_matches_a_numpy_oracle():
    s, t = _pyramid(7, channels=(3, 5)), _pyramid(8, channels=(6, 2))
    total, _ = relation_kd(s, t, BOXES.double(), INDEX, [4.0, 8.0])
    expected = _oracle([x.numpy() for x in s], [x.numpy() for x in t], BOXES.numpy(), INDEX.numpy(), [4.0, 8.0])
    assert float(total) == pytest.approx(expected, rel=1e-9)


def test_pair_relation_and_embeddings_doc_values():
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(pair_relation(e, "cosine"), torch.eye(2))
    m = torch.zeros(1, 2, 4, 4)
    m[0, 1] = 3.0
    assert instance_embeddings(m, BOXES[:1], INDEX[:1], 4.0).tolist() == [[0.0, 3.0]]


def test_teacher_instances_are_confident_deduplicated_detections():
    a = 16
    pts = torch.stack(torch.meshgrid(torch.arange(4.0) + 0.5, torch.arange(4.0) + 0.5, indexing="xy"), -1).view(-1, 2)
    logits = torch.full((2, 1, a), -5.0)
    logits[0, 0, [0, 1, 10]] = torch.tensor([3.0, 2.0, 1.0])  # 0 and 1 are neighbours: same box after decoding
    box = torch.full((2, 4, a), 1.0)  # every anchor predicts a 2x2-cell box around itself
    box[0, :, 1] = torch.tensor([2.0, 1.0, 0.0, 1.0])  # anchor 1's box equals anchor 0's box
    head = HeadOutputs(
        cls_logits=logits, box_raw=box, reg_max=1, anchor_points=pts, stride_tensor=torch.full((a, 1), 8.0)
    )
    boxes, index = teacher_instances(head, conf=0.5, max_instances=8)
    assert index.tolist() == [0, 0] and boxes[0].tolist() == [-4.0, -4.0, 12.0, 12.0]
    none, idx = teacher_instances(head, conf=0.999, max_instances=8)
    assert none.shape == (0, 4) and idx.numel() == 0
