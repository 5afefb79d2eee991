"""Where to distil: position masks on the feature grid, from ground-truth boxes or teacher confidence."""

from __future__ import annotations

import torch
from torch import Tensor


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
    for (h, w), s in zip(grid_shapes, strides):
        mask = boxes_xyxy.new_zeros(batch_size, h * w)
        if boxes_xyxy.numel():
            cx = (torch.arange(w, device=boxes_xyxy.device, dtype=boxes_xyxy.dtype) + 0.5) * s
            cy = (torch.arange(h, device=boxes_xyxy.device, dtype=boxes_xyxy.dtype) + 0.5) * s
            x1, y1, x2, y2 = (boxes_xyxy[:, k, None] for k in range(4))
            inside_x = (cx[None] >= x1) & (cx[None] <= x2)  # (N, W)
            inside_y = (cy[None] >= y1) & (cy[None] <= y2)  # (N, H)
            inside = (inside_y[:, :, None] & inside_x[:, None, :]).reshape(len(idx), h * w)
            centre = (((y1 + y2) / 2 / s).floor().clamp(0, h - 1)) * w + ((x1 + x2) / 2 / s).floor().clamp(0, w - 1)
            inside[torch.arange(len(idx), device=idx.device), centre.view(-1).long()] = True
            box, pos = inside.nonzero(as_tuple=True)
            mask[idx[box], pos] = 1.0
        out.append(mask.view(batch_size, 1, h, w))
    return out


def split_levels(per_anchor: Tensor, grid_shapes: list[tuple[int, int]]) -> list[Tensor]:
    """Split a (B, A) per-anchor tensor into one (B, 1, H, W) map per level (anchors are level-major).

    >>> [t.shape[-2:] for t in split_levels(torch.zeros(2, 20), [(4, 4), (2, 2)])]
    [torch.Size([4, 4]), torch.Size([2, 2])]
    """
    sizes = [h * w for h, w in grid_shapes]
    if per_anchor.shape[-1] != sum(sizes):
        raise ValueError(f"split_levels: {per_anchor.shape[-1]} anchors but the grids hold {sum(sizes)}")
    parts = per_anchor.split(sizes, dim=-1)
    return [p.reshape(p.shape[0], 1, h, w) for p, (h, w) in zip(parts, grid_shapes)]
