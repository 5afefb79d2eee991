"""Where to distil: position masks on the feature grid, from ground-truth boxes or teacher confidence."""

from __future__ import annotations

import torch
from torch import Tensor


def _cells_in_boxes(boxes_xyxy: Tensor, h: int, w: int, stride: int) -> Tensor:
    """(N, H*W) True where a cell centre lies inside a box, and at each box's centre cell (tiny objects count)."""
    n = len(boxes_xyxy)
    cx = (torch.arange(w, device=boxes_xyxy.device, dtype=boxes_xyxy.dtype) + 0.5) * stride
    cy = (torch.arange(h, device=boxes_xyxy.device, dtype=boxes_xyxy.dtype) + 0.5) * stride
    x1, y1, x2, y2 = (boxes_xyxy[:, k, None] for k in range(4))
    inside_x = (cx[None] >= x1) & (cx[None] <= x2)  # (N, W)
    inside_y = (cy[None] >= y1) & (cy[None] <= y2)  # (N, H)
    inside = (inside_y[:, :, None] & inside_x[:, None, :]).reshape(n, h * w)
    centre = ((y1 + y2) / 2 / stride).floor().clamp(0, h - 1) * w + ((x1 + x2) / 2 / stride).floor().clamp(0, w - 1)
    inside[torch.arange(n, device=boxes_xyxy.device), centre.view(-1).long()] = True
    return inside


def gt_box_masks(
    boxes_xyxy: Tensor, batch_idx: Tensor, batch_size: int, grid_shapes: list[tuple[int, int]], strides: list[int]
) -> list[Tensor]:
    """Per level, 1 where a cell centre lies inside a ground-truth box (and at each box's centre cell), else 0.

    The centre cell is always marked so that objects smaller than a cell still get imitated.

    Args:
        boxes_xyxy: (N, 4) boxes in input pixels.
        batch_idx: (N,) image index of each box.
        batch_size: B.
        grid_shapes: (H, W) of each level.
        strides: stride of each level.

    Shape:
        Returns one (B, 1, H, W) float mask per level.

    >>> m = gt_box_masks(torch.tensor([[0.0, 0.0, 16.0, 8.0]]), torch.tensor([0]), 1, [(2, 4)], [8])
    >>> m[0][0, 0].tolist()
    [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """
    out = []
    idx = batch_idx.long()
    for (h, w), s in zip(grid_shapes, strides, strict=True):
        mask = boxes_xyxy.new_zeros(batch_size, h * w)
        if boxes_xyxy.numel():
            box, pos = _cells_in_boxes(boxes_xyxy, h, w, s).nonzero(as_tuple=True)
            mask[idx[box], pos] = 1.0
        out.append(mask.view(batch_size, 1, h, w))
    return out


def fgd_weights(
    boxes_xyxy: Tensor, batch_idx: Tensor, batch_size: int, grid_shapes: list[tuple[int, int]], strides: list[int]
) -> list[tuple[Tensor, Tensor]]:
    """FGD's scaled masks per level: (foreground, background) weights, each (B, H, W).

    A foreground position weighs 1 / (cells of the box covering it), the smallest box winning where boxes
    overlap, so each object contributes about equally; background positions weigh 1 / (background cells of the
    image), so foreground and background are each a mean.

    >>> fg, bg = fgd_weights(torch.tensor([[0.0, 0.0, 16.0, 8.0]]), torch.tensor([0]), 1, [(2, 4)], [8])[0]
    >>> fg[0].tolist(), bg[0].tolist()
    ([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], [[0.0, 0.0, 0.1666..., 0.1666...], [0.1666..., ...]])
    """
    out = []
    idx = batch_idx.long()
    for (h, w), s in zip(grid_shapes, strides, strict=True):
        fg = boxes_xyxy.new_zeros(batch_size, h * w)
        if boxes_xyxy.numel():
            inside = _cells_in_boxes(boxes_xyxy, h, w, s)
            value = 1.0 / inside.sum(dim=1).clamp(min=1).to(fg.dtype)  # (N,)
            box, pos = inside.nonzero(as_tuple=True)
            fg.view(-1).scatter_reduce_(0, idx[box] * (h * w) + pos, value[box], reduce="amax")
        bg = (fg == 0).to(fg.dtype)
        bg = bg / bg.sum(dim=1, keepdim=True).clamp(min=1)
        out.append((fg.view(batch_size, h, w), bg.view(batch_size, h, w)))
    return out


def _prior_boxes(h: int, w: int, stride: int, scale: float, ratios: tuple[float, ...], like: Tensor) -> Tensor:
    """(H*W, R, 4) xyxy priors centred on each cell: side ``scale * stride``, aspect ratios ``ratios`` (w/h)."""
    cx = (torch.arange(w, device=like.device, dtype=like.dtype) + 0.5) * stride
    cy = (torch.arange(h, device=like.device, dtype=like.dtype) + 0.5) * stride
    centres = torch.stack(torch.meshgrid(cy, cx, indexing="ij")[::-1], dim=-1).view(-1, 1, 2)  # (HW, 1, 2) x, y
    r = torch.tensor(ratios, device=like.device, dtype=like.dtype)
    half = torch.stack((r.sqrt(), 1.0 / r.sqrt()), dim=-1) * (scale * stride / 2)  # (R, 2) half w, half h
    return torch.cat((centres - half, centres + half), dim=-1)


def _pairwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box in ``a`` (N, 4) with every box in ``b`` (M, 4): (N, M)."""
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=-1)
    return inter / (area_a[:, None] + area_b[None] - inter).clamp(min=1e-9)


def fine_grained_masks(
    boxes_xyxy: Tensor,
    batch_idx: Tensor,
    batch_size: int,
    grid_shapes: list[tuple[int, int]],
    strides: list[int],
    *,
    thresh: float = 0.5,
    anchor_scale: float = 4.0,
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0),
) -> list[Tensor]:
    """Fine-grained imitation masks (Wang et al., CVPR 2019): the cells near objects, per level.

    For each ground-truth box, the IoU with every prior box (``anchor_scale`` strides wide, ``anchor_ratios``
    shapes, centred on every cell of every level) is computed; ``M`` is its best. A cell is imitated when one of
    its priors has IoU > ``thresh * M`` with some box of its image. The threshold adapts to each object, so small
    and large objects both get a neighbourhood.

    Shape:
        Returns one (B, 1, H, W) float mask per level.

    >>> m = fine_grained_masks(torch.tensor([[8.0, 8.0, 24.0, 24.0]]), torch.tensor([0]), 1, [(4, 4)], [8],
    ...                        anchor_scale=2.0, anchor_ratios=(1.0,))
    >>> m[0][0, 0].tolist()
    [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]
    """
    if not 0.0 <= thresh <= 1.0:
        raise ValueError(f"fine_grained_masks: thresh must be in [0, 1], got {thresh}")
    masks = [boxes_xyxy.new_zeros(batch_size, h * w) for h, w in grid_shapes]
    if not boxes_xyxy.numel():
        return [m.view(batch_size, 1, h, w) for m, (h, w) in zip(masks, grid_shapes, strict=True)]
    ious = []
    for (h, w), s in zip(grid_shapes, strides, strict=True):
        priors = _prior_boxes(h, w, s, anchor_scale, tuple(anchor_ratios), boxes_xyxy)
        ious.append(_pairwise_iou(boxes_xyxy, priors.view(-1, 4)).view(len(boxes_xyxy), h * w, -1).amax(dim=-1))
    best = torch.cat(ious, dim=1).amax(dim=1, keepdim=True)  # (N, 1): over all priors of all levels
    idx = batch_idx.long()
    for mask, iou in zip(masks, ious, strict=True):
        box, pos = ((iou > thresh * best) & (best > 0)).nonzero(as_tuple=True)
        mask[idx[box], pos] = 1.0
    return [m.view(batch_size, 1, h, w) for m, (h, w) in zip(masks, grid_shapes, strict=True)]


def split_levels(per_anchor: Tensor, grid_shapes: list[tuple[int, int]]) -> list[Tensor]:
    """Split a (B, A) per-anchor tensor into one (B, 1, H, W) map per level (anchors are level-major).

    >>> [t.shape[-2:] for t in split_levels(torch.zeros(2, 20), [(4, 4), (2, 2)])]
    [torch.Size([4, 4]), torch.Size([2, 2])]
    """
    sizes = [h * w for h, w in grid_shapes]
    if per_anchor.shape[-1] != sum(sizes):
        raise ValueError(f"split_levels: {per_anchor.shape[-1]} anchors but the grids hold {sum(sizes)}")
    parts = torch.split(per_anchor, sizes, dim=-1)
    return [p.reshape(p.shape[0], 1, h, w) for p, (h, w) in zip(parts, grid_shapes, strict=True)]
