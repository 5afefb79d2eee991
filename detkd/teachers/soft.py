"""Soft labels: a teacher's detections kept with everything logit and box KD need, and turned back into dense
per-anchor targets on the student's grid after augmentation has moved them.

A *soft box* is one teacher detection before the final confidence cut: its box, the whole class-probability vector
and, for DFL heads, the four per-side distance distributions with the stride of the anchor that predicted them.
The distributions are kept in a frame-free form, *offsets of each bin from the expected edge* in pixels
(:func:`edge_offsets`), so that scaling, translating and flipping an image moves them exactly: scale multiplies the
offsets, translation moves only the box, a left-right flip swaps the left and right sides.

A dense teacher also leaves its *score field*: every anchor whose highest class probability reaches the cache's
threshold, as a *cell* (the square of one stride around the anchor point) with its class vector. Cells travel
through augmentation like boxes; afterwards each is painted onto the student's level nearest its moved stride
(:func:`paint_field`). Soft boxes alone cannot give logit KD this field: a box's score says nothing about how the
teacher's score falls off across the anchors and levels around it (measured in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from detkd.types import HeadOutputs

EPS = 1e-6


@dataclass
class SoftBoxes:
    """Teacher detections of a batch (or of one image, ``batch_idx`` all 0), in one frame.

    Attributes:
        boxes: (M, 4) xyxy pixels of the frame.
        batch_idx: (M,) image of each box in the batch.
        probs: (M, C) class probabilities (sigmoid scores of the teacher's head).
        dist: optional (M, 4, R) per-side DFL bin probabilities (l, t, r, b), for heads with ``R > 1`` bins.
        spacing: optional (M, 2) pixels between neighbouring bins along x (l, r) and y (t, b): the predicting
            anchor's stride, scaled with the frame.
    """

    boxes: Tensor
    batch_idx: Tensor
    probs: Tensor
    dist: Tensor | None = None
    spacing: Tensor | None = None

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, keep: Tensor) -> SoftBoxes:
        return SoftBoxes(
            self.boxes[keep],
            self.batch_idx[keep],
            self.probs[keep],
            None if self.dist is None else self.dist[keep],
            None if self.spacing is None else self.spacing[keep],
        )


def class_probs(head: HeadOutputs) -> Tensor:
    """A dense head's class probabilities (B, C, A), zero for classes its class mask leaves out."""
    probs = head.cls_logits.detach().float().sigmoid()
    return probs if head.class_mask is None else probs * head.class_mask.view(1, -1, 1).to(probs)


def dense_to_detections(
    head: HeadOutputs, *, conf: float, max_det: int, iou: float = 0.7
) -> list[tuple[Tensor, Tensor, Tensor | None, Tensor]]:
    """A dense head's detections before the final confidence cut, per image.

    Candidates are anchors whose highest class probability reaches ``conf``; overlapping ones are suppressed
    class-agnostically (IoU > ``iou``, each survivor keeps its whole class vector, so a box the teacher is unsure
    between two classes stays one soft box), and the ``max_det`` highest are kept.

    Returns:
        per image ``(boxes (n, 4) xyxy input pixels, probs (n, C), dist (n, 4, R) or None, stride (n,))``.

    >>> h = HeadOutputs(torch.tensor([[[4.0, -9.0]]]), torch.ones(1, 4, 2), 1,
    ...                 torch.tensor([[1.5, 1.5], [3.5, 3.5]]), torch.tensor([[8.0], [8.0]]))
    >>> boxes, probs, dist, stride = dense_to_detections(h, conf=0.5, max_det=10)[0]
    >>> boxes.tolist(), dist, stride.tolist()
    ([[4.0, 4.0, 20.0, 20.0]], None, [8.0])
    """
    from torchvision.ops import nms

    probs_all = class_probs(head)  # (B, C, A)
    boxes_all = head.boxes_xyxy().detach().float()  # (B, 4, A)
    dist_all = None
    if head.reg_max > 1:
        b, _, a = head.box_raw.shape
        dist_all = head.box_raw.detach().float().view(b, 4, head.reg_max, a).softmax(dim=2)
    out: list[tuple[Tensor, Tensor, Tensor | None, Tensor]] = []
    for i in range(probs_all.shape[0]):
        score = probs_all[i].amax(dim=0)
        cand = torch.nonzero(score >= conf).squeeze(1)
        if cand.numel() > max(max_det, 1) * 30:  # NMS cost: keep the strongest candidates only
            cand = cand[score[cand].topk(max_det * 30).indices]
        boxes = boxes_all[i][:, cand].t()
        kept = nms(boxes, score[cand], iou)[:max_det]
        idx = cand[kept]
        out.append(
            (
                boxes[kept],
                probs_all[i][:, idx].t(),
                None if dist_all is None else dist_all[i][:, :, idx].permute(2, 0, 1),
                head.stride_tensor.view(-1)[idx].float(),
            )
        )
    return out


@dataclass
class ScoreField:
    """A teacher's score field (its cells) in one frame.

    Attributes:
        points: (K, 2) anchor points, pixels of the frame.
        size: (K,) the anchor's stride in the frame's pixels (a cell is the square of this side around its point).
        batch_idx: (K,) image of each cell in the batch.
        probs: (K, C) the anchor's class probabilities.
        box: optional (K, 4, R) the anchor's own box: per side (l, t, r, b) its DFL bin probabilities (``R > 1``),
            or (K, 4, 1) its distances, in units of the anchor's stride (``R == 1``); sides already swapped where
            the frame was flipped.
    """

    points: Tensor
    size: Tensor
    batch_idx: Tensor
    probs: Tensor
    box: Tensor | None = None

    def __len__(self) -> int:
        return int(self.points.shape[0])


def dense_field(head: HeadOutputs, *, conf: float, max_cells: int) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Per image, the anchors of a dense head whose highest class probability reaches ``conf`` (the ``max_cells``
    highest when there are more): ``(points (k, 2) input pixels, stride (k,), probs (k, C), box (k, 4, R))`` with
    ``box`` the anchor's own box as in :class:`ScoreField`.

    >>> h = HeadOutputs(torch.tensor([[[4.0, -9.0]]]), torch.ones(1, 4, 2), 1,
    ...                 torch.tensor([[1.5, 1.5], [3.5, 3.5]]), torch.tensor([[8.0], [8.0]]))
    >>> points, stride, probs, box = dense_field(h, conf=0.5, max_cells=10)[0]
    >>> points.tolist(), stride.tolist(), box[0, :, 0].tolist()
    ([[12.0, 12.0]], [8.0], [1.0, 1.0, 1.0, 1.0])
    """
    probs_all = class_probs(head)  # (B, C, A)
    stride = head.stride_tensor.view(-1).float()
    points = head.anchor_points.float() * stride.view(-1, 1)
    b, _, a = head.box_raw.shape
    r = head.reg_max
    box_all = head.box_raw.detach().float().view(b, 4, r, a)
    box_all = box_all.softmax(dim=2) if r > 1 else box_all
    out = []
    for i in range(probs_all.shape[0]):
        score = probs_all[i].amax(dim=0)
        cand = torch.nonzero(score >= conf).squeeze(1)
        if cand.numel() > max_cells:
            cand = cand[score[cand].topk(max_cells).indices].sort().values
        out.append((points[cand], stride[cand], probs_all[i][:, cand].t(), box_all[i][..., cand].permute(2, 0, 1)))
    return out


@dataclass
class _Painted:
    """Which cell sets which student anchor: ``cell`` (P,) and ``index`` (P,) = image * A + anchor."""

    cell: Tensor
    index: Tensor
    anchors: int


def paint_pairs(field: ScoreField, image_hw: tuple[int, int], strides: tuple[int, ...]) -> _Painted:
    """The (cell, anchor) pairs of :func:`paint_field`'s rule (computed once, shared by class and box targets)."""
    device = field.points.device
    h, w = image_hw
    level_strides = torch.tensor(strides, dtype=torch.float32, device=device)
    sizes = [(h // s, w // s) for s in strides]
    starts = torch.tensor([0] + [gh * gw for gh, gw in sizes], device=device).cumsum(0)
    anchors = int(starts[-1])
    if not len(field):
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return _Painted(empty, empty, anchors)
    size = field.size.float().clamp_min(1e-3)
    level = (torch.log2(size.view(-1, 1) / level_strides.view(1, -1))).abs().argmin(dim=1)
    s = level_strides[level]
    gw = torch.tensor([g[1] for g in sizes], device=device)[level]
    gh = torch.tensor([g[0] for g in sizes], device=device)[level]
    lo = torch.ceil((field.points - size.view(-1, 1) / 2) / s.view(-1, 1) - 0.5)  # first anchor inside, x and y
    hi = torch.floor((field.points + size.view(-1, 1) / 2) / s.view(-1, 1) - 0.5)
    near = torch.floor(field.points / s.view(-1, 1))
    small = hi < lo  # no anchor centre inside: the nearest one
    lo, hi = torch.where(small, near, lo), torch.where(small, near, hi)
    span = int((hi - lo).max().clamp(0, 8).item()) + 1
    steps = torch.arange(span, device=device, dtype=lo.dtype)
    gx = lo[:, 0:1] + steps.view(1, -1)  # (K, span)
    gy = lo[:, 1:2] + steps.view(1, -1)
    ok_x = (gx <= hi[:, 0:1]) & (gx >= 0) & (gx < gw.view(-1, 1))
    ok_y = (gy <= hi[:, 1:2]) & (gy >= 0) & (gy < gh.view(-1, 1))
    ok = ok_y.unsqueeze(2) & ok_x.unsqueeze(1)  # (K, span_y, span_x)
    flat = starts[level].view(-1, 1, 1) + gy.long().unsqueeze(2) * gw.view(-1, 1, 1) + gx.long().unsqueeze(1)
    cell, _, _ = torch.nonzero(ok, as_tuple=True)
    return _Painted(cell, field.batch_idx.long()[cell] * anchors + flat[ok], anchors)


def paint_field(
    field: ScoreField,
    batch_size: int,
    image_hw: tuple[int, int],
    strides: tuple[int, ...],
    pairs: _Painted | None = None,
) -> Tensor:
    """A score field as class probabilities (B, C, A) on the student's anchors (level by level, like
    :func:`anchor_grid`).

    Rule: a cell goes to the student level whose stride is nearest its own (in octaves: a teacher anchor of stride
    8 on an image the augmentation halved is a stride-4 cell and lands on the finest level) and sets every anchor
    of that level whose centre lies inside it, or, for a cell smaller than the level's stride, the anchor nearest
    its point. Where cells overlap, each class takes the highest probability; anchors no cell reaches are
    background (``EPS``, below the cache's threshold). With no augmentation and the teacher's strides, this is the
    teacher's field exactly at every anchor above the threshold.

    >>> f = ScoreField(torch.tensor([[12.0, 4.0]]), torch.tensor([8.0]), torch.tensor([0]), torch.tensor([[0.7]]))
    >>> [round(v, 2) for v in paint_field(f, 1, (16, 16), (8,))[0, 0].tolist()]
    [0.0, 0.7, 0.0, 0.0]
    >>> f = ScoreField(torch.tensor([[8.0, 8.0]]), torch.tensor([16.0]), torch.tensor([0]), torch.tensor([[0.7]]))
    >>> [round(v, 2) for v in paint_field(f, 1, (16, 16), (8,))[0, 0].tolist()]  # a larger cell covers four
    [0.7, 0.7, 0.7, 0.7]
    """
    pairs = pairs if pairs is not None else paint_pairs(field, image_hw, strides)
    nc = field.probs.shape[1]
    out = torch.full((batch_size * pairs.anchors, nc), EPS, device=field.points.device)
    out.scatter_reduce_(
        0, pairs.index.view(-1, 1).expand(-1, nc), field.probs.float()[pairs.cell], reduce="amax", include_self=True
    )
    return out.view(batch_size, pairs.anchors, nc).permute(0, 2, 1).clamp(EPS, 1 - EPS)


def paint_field_boxes(
    field: ScoreField,
    batch_size: int,
    image_hw: tuple[int, int],
    strides: tuple[int, ...],
    pairs: _Painted | None = None,
) -> tuple[Tensor, Tensor]:
    """The cells' own boxes as box targets on the student's anchors: ``(box (B, 4 * R, A), valid (B, A))`` in
    :class:`~detkd.types.HeadOutputs`' layout (DFL log-probabilities for ``R > 1``, else distances in grid units).

    Each anchor a cell sets (:func:`paint_field`'s rule) takes the box of its highest-scoring cell. A DFL target is
    the cell's distributions moved to the anchor: bin ``j`` of a side lies ``j`` cell strides from the cell's point,
    so its distance from the anchor, in the anchor's stride, is that plus the offset between the two points; its
    mass is split between the two nearest bins. At the cell's own anchor and stride it is the distribution itself.

    >>> d = torch.zeros(1, 4, 4); d[0, :, 2] = 1.0  # every side 2 strides from the point
    >>> f = ScoreField(torch.tensor([[12.0, 4.0]]), torch.tensor([8.0]), torch.tensor([0]), torch.tensor([[0.7]]), d)
    >>> box, valid = paint_field_boxes(f, 1, (16, 16), (8,))
    >>> valid[0].tolist(), box[0, :4, 1].exp().round(decimals=3).tolist()  # left side at anchor 1: all in bin 2
    ([False, True, False, False], [0.0, 0.0, 1.0, 0.0])
    """
    assert field.box is not None
    device = field.points.device
    pairs = pairs if pairs is not None else paint_pairs(field, image_hw, strides)
    bins = field.box.shape[-1]
    n = batch_size * pairs.anchors
    score = field.probs.float().amax(dim=1)[pairs.cell]
    best = torch.full((n,), -1.0, device=device).scatter_reduce(0, pairs.index, score, reduce="amax")
    order = torch.arange(len(pairs.cell), device=device)
    winner = torch.full((n,), -1, dtype=torch.long, device=device).scatter_reduce(
        0, pairs.index, torch.where(score >= best[pairs.index], order, -1), reduce="amax"
    )
    hit = torch.nonzero(winner >= 0).squeeze(1)
    k = pairs.cell[winner[hit]]
    anchor_points, stride_tensor = anchor_grid(image_hw, strides, device)
    a = hit % pairs.anchors
    q, st = anchor_points[a] * stride_tensor[a], stride_tensor[a]  # (n, 2) pixels, (n, 1)
    shift = (q - field.points[k]) / st  # anchor minus cell point, in the anchor's stride
    side_shift = torch.cat((shift, -shift), dim=1)  # l, t grow and r, b shrink as the anchor moves right / down
    ratio = (field.size[k].float().view(-1, 1) / st).view(-1, 1, 1)
    src = field.box[k].float()
    fill = 0.0 if bins == 1 else EPS
    box = torch.full((n, 4 * bins), fill, device=device)
    if bins > 1:
        pos = side_shift.unsqueeze(-1) + torch.arange(bins, device=device).view(1, 1, -1) * ratio
        box[hit] = _rebin(src, pos, bins).clamp_min(EPS).log().reshape(-1, 4 * bins)
    else:
        box[hit] = (side_shift + src[..., 0] * ratio[..., 0]).reshape(-1, 4)
    valid = torch.zeros(n, dtype=torch.bool, device=device)
    valid[hit] = True
    return box.view(batch_size, pairs.anchors, 4 * bins).permute(0, 2, 1), valid.view(batch_size, pairs.anchors)


def edge_offsets(dist: Tensor, spacing: Tensor) -> Tensor:
    """Pixel offset of every bin of every side from the side's expected edge (outwards is negative for l/t).

    For the left side the edge of bin ``j`` lies at ``anchor_x - j * s`` and the expected edge at
    ``anchor_x - d * s`` (``d`` the distribution's mean), so its offset is ``-(j - d) * s``; right and bottom are
    ``+(j - d) * s``. Shape: dist (M, 4, R), spacing (M, 2) -> (M, 4, R).

    >>> d = torch.zeros(1, 4, 3); d[..., 1] = 1.0  # all mass in bin 1: the edge is exactly at the mean
    >>> (edge_offsets(d, torch.tensor([[8.0, 8.0]]))[0, 0] + 0.0).tolist()
    [8.0, 0.0, -8.0]
    """
    r = dist.shape[-1]
    bins = torch.arange(r, device=dist.device, dtype=dist.dtype)
    mean = (dist * bins).sum(dim=-1, keepdim=True)
    side_spacing = spacing[:, [0, 1, 0, 1]].unsqueeze(-1)
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=dist.device, dtype=dist.dtype).view(1, 4, 1)
    return sign * (bins - mean) * side_spacing


def _rebin(dist: Tensor, pos: Tensor, bins: int) -> Tensor:
    """Mass ``dist`` (n, 4, R) at real positions ``pos`` (n, 4, R) split linearly onto integer bins 0..bins-1."""
    pos = pos.clamp(0.0, bins - 1 - 1e-4)
    lo = pos.floor()
    w_hi = pos - lo
    lo = lo.long()
    out = dist.new_zeros(*dist.shape[:2], bins)
    out.scatter_add_(2, lo, dist * (1 - w_hi))
    out.scatter_add_(2, (lo + 1).clamp(max=bins - 1), dist * w_hi)
    return out


def anchor_grid(image_hw: tuple[int, int], strides: tuple[int, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    """Anchor points (A, 2) in grid units (cell centres) and their strides (A, 1), level by level like
    Ultralytics' ``make_anchors``."""
    h, w = image_hw
    points, stride_col = [], []
    for s in strides:
        gy, gx = torch.meshgrid(torch.arange(h // s) + 0.5, torch.arange(w // s) + 0.5, indexing="ij")
        points.append(torch.stack((gx, gy), dim=-1).reshape(-1, 2))
        stride_col.append(torch.full((points[-1].shape[0], 1), float(s)))
    return torch.cat(points).to(device), torch.cat(stride_col).to(device)


def soft_to_dense(
    soft: SoftBoxes,
    batch_size: int,
    image_hw: tuple[int, int],
    strides: tuple[int, ...],
    *,
    reg_max: int = 1,
    class_mask: Tensor | None = None,
    centre_sigma: float = 0.0,
    rank: str = "weighted",
    level_tau: float = 0.0,
) -> HeadOutputs:
    """Soft boxes as dense targets on an anchor-free student's grid.

    Rule: each anchor point (cell centres of every level) takes the highest-scoring soft box that contains it; it
    gets that box's class vector and its box as left/top/right/bottom distances. Points inside no box are
    background (all classes ~0) and carry no box target (``box_valid`` 0, so box KD skips them).

    With distributions (``soft.dist``) and ``reg_max > 1``, the box target is a DFL distribution over the
    student's ``reg_max`` bins: each teacher bin's edge (box edge + its offset, :func:`edge_offsets`) becomes a
    distance from the anchor point in its own stride, and its mass is split between the two nearest bins. At the
    anchor that predicted the box, in the teacher's own frame, this gives back the teacher's distribution exactly.
    Without them, ``reg_max`` is 1 and the target is the distances themselves.

    >>> s = SoftBoxes(torch.tensor([[0.0, 0.0, 16.0, 16.0]]), torch.tensor([0]), torch.tensor([[0.1, 0.9]]))
    >>> out = soft_to_dense(s, 1, (16, 16), (8,))
    >>> [round(v, 2) for v in out.cls_logits.sigmoid()[0, 1].tolist()], out.boxes_xyxy()[0, :, 0].tolist()
    ([0.9, 0.9, 0.9, 0.9], [0.0, 0.0, 16.0, 16.0])
    """
    device = soft.boxes.device
    anchor_points, stride_tensor = anchor_grid(image_hw, strides, device)
    pix = anchor_points * stride_tensor
    a = pix.shape[0]
    nc = soft.probs.shape[1]
    use_dist = soft.dist is not None and soft.spacing is not None and reg_max > 1
    out_bins = reg_max if use_dist else 1
    probs = torch.full((batch_size, nc, a), EPS, device=device)
    box = torch.zeros(batch_size, 4 * out_bins, a, device=device)
    valid = torch.zeros(batch_size, a, dtype=torch.bool, device=device)
    offsets = edge_offsets(soft.dist.float(), soft.spacing.float()) if use_dist else None  # type: ignore[union-attr]
    for i in range(batch_size):
        sel = torch.nonzero(soft.batch_idx == i).squeeze(1)
        if sel.numel() == 0:
            continue
        boxes = soft.boxes[sel].float()
        score = soft.probs[sel].float().amax(dim=1)
        inside = (
            (pix[:, None, 0] >= boxes[None, :, 0])
            & (pix[:, None, 0] <= boxes[None, :, 2])
            & (pix[:, None, 1] >= boxes[None, :, 1])
            & (pix[:, None, 1] <= boxes[None, :, 3])
        )  # (A, D)
        weight = torch.ones_like(inside, dtype=score.dtype)
        if centre_sigma > 0:  # (A, D) the teacher's scores fall off away from a box's centre
            half = ((boxes[:, 2:] - boxes[:, :2]) / 2).clamp_min(1e-3)
            off = (pix[:, None, :] - (boxes[None, :, :2] + boxes[None, :, 2:]) / 2) / half[None]
            weight = torch.exp(-(off**2).sum(dim=2) / (2 * centre_sigma**2))
        if level_tau > 0 and soft.spacing is not None:  # (A, D) the level the teacher predicted the box from
            ratio = torch.log2(stride_tensor.view(-1, 1) / soft.spacing[sel][:, 0].float().clamp_min(1e-3).view(1, -1))
            weight = weight * torch.exp(-(ratio**2) / (2 * level_tau**2))
        ranked = torch.where(
            inside, score[None, :] * (weight if rank == "weighted" else 1.0), torch.full_like(weight, -1.0)
        )
        best_score, best = ranked.max(dim=1)
        hit = best_score >= 0
        idx = torch.nonzero(hit).squeeze(1)
        k = best[idx]
        b, p, st = boxes[k], pix[idx], stride_tensor[idx]
        target = soft.probs[sel][k].float() * weight[idx, k].unsqueeze(1)
        probs[i][:, idx] = target.t().clamp(EPS, 1 - EPS)
        ltrb = torch.cat((p - b[:, :2], b[:, 2:] - p), dim=1) / st  # (n, 4) grid units
        if offsets is not None:
            dist = soft.dist[sel][k].float()  # type: ignore[index]
            # bin j's edge lies at (box edge + offset_j); its distance from p, in p's stride, for each side
            sign = torch.tensor([-1.0, -1.0, 1.0, 1.0], device=device).view(1, 4, 1)
            pos = ltrb.unsqueeze(-1) + sign * offsets[sel][k] / st.view(-1, 1, 1)
            target = _rebin(dist, pos, out_bins).clamp_min(EPS)
            box[i][:, idx] = target.log().reshape(-1, 4 * out_bins).t()
        else:
            box[i][:, idx] = ltrb.t()
        valid[i, idx] = True
    return HeadOutputs(
        cls_logits=torch.logit(probs),
        box_raw=box,
        reg_max=out_bins,
        anchor_points=anchor_points,
        stride_tensor=stride_tensor,
        class_mask=class_mask,
        box_valid=valid,
    )
