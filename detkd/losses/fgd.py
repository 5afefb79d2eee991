"""FGD: focal-and-global distillation (Yang et al., CVPR 2022), a pure loss and its relation module."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detkd.losses._checks import check_finite, check_same_shape, check_temperature, upcast


def fgd_attention(x: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Spatial and channel attention: ``A_S = HW * softmax(mean_c |x| / T)``, ``A_C = C * softmax(mean_hw |x| / T)``.

    Both average to 1, so they re-weight positions and channels without changing the loss's scale.

    Shape:
        x: (B, C, H, W). Returns (B, H, W) and (B, C).
    """
    b, c, h, w = x.shape
    spatial = (x.abs().mean(dim=1).view(b, -1) / temperature).softmax(dim=1).view(b, h, w) * (h * w)
    channel = (x.abs().mean(dim=(2, 3)) / temperature).softmax(dim=1) * c
    return spatial, channel


class GlobalRelation(nn.Module):
    """FGD's global-relation block (a GcBlock): ``x + W2(ReLU(LN(W1(sum_j softmax(W_k x)_j x_j))))``.

    One block per level, applied to both the student and the teacher map with shared weights, so that the
    relation term is zero when the maps are equal (the paper's code uses two blocks; sharing keeps the term a
    distance that the block cannot learn to cancel). The last convolution starts at zero (the block starts as the
    identity), as in the paper's code.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = max(channels // 2, 1)
        self.key = nn.Conv2d(channels, 1, kernel_size=1)
        self.transform = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.LayerNorm([hidden, 1, 1]),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, channels, kernel_size=1),
        )
        last = self.transform[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        weights = self.key(x).view(b, 1, h * w).softmax(dim=-1)  # (B, 1, HW)
        context = torch.bmm(x.view(b, c, h * w), weights.transpose(1, 2)).view(b, c, 1, 1)
        transformed: Tensor = self.transform(context)
        return x + transformed


def fgd_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    fg_weight: Tensor,
    bg_weight: Tensor,
    temperature: float = 0.5,
    alpha_fg: float = 1e-3,
    beta_bg: float = 5e-4,
    gamma_attention: float = 5e-4,
    lambda_global: float = 5e-6,
    relation: nn.Module | None = None,
) -> Tensor:
    """Focal and global distillation (Yang et al., CVPR 2022) for one pyramid level.

    With the teacher's attention ``A_S``, ``A_C`` (see :func:`fgd_attention`) and ``D = (t - s)^2``:

    * focal:  ``alpha * sum M S A_S A_C D + beta * sum N S A_S A_C D`` where ``M S`` (``fg_weight``) is 1/area of the
      ground-truth box covering a position (the smallest box wins) and ``N S`` (``bg_weight``) is 1/(number of
      background positions) outside every box;
    * attention: ``gamma * (|A_S^t - A_S^s|_1 + |A_C^t - A_C^s|_1)``;
    * global: ``lambda * sum (R(t) - R(s))^2`` with ``R`` the :class:`GlobalRelation` block (skipped when None);

    every sum divided by the batch size, as published. The focal terms are per-box means, so each object counts
    the same whatever its size. Zero when student equals teacher.

    Shape:
        student, teacher: (B, C, H, W); fg_weight, bg_weight: (B, H, W) or (B, 1, H, W). Returns a scalar.

    >>> s = torch.randn(2, 4, 3, 3); fg = torch.zeros(2, 3, 3); fg[:, 1, 1] = 1.0
    >>> float(fgd_loss(s, s.clone(), fg_weight=fg, bg_weight=(fg == 0) / 8.0))
    0.0
    """
    check_same_shape("fgd_loss", student=student, teacher=teacher)
    if student.dim() != 4:
        raise ValueError(f"fgd_loss: expected (B, C, H, W) maps, got {tuple(student.shape)}")
    check_temperature("fgd_loss", temperature)
    b, _, h, w = student.shape
    expected = student.new_empty(b, 1, h, w)
    for name, weight in (("fg_weight", fg_weight), ("bg_weight", bg_weight)):
        if weight.dim() == 4:
            check_same_shape("fgd_loss", **{name: weight}, expected=expected)
    fg = fg_weight[:, 0] if fg_weight.dim() == 4 else fg_weight
    bg = bg_weight[:, 0] if bg_weight.dim() == 4 else bg_weight
    check_same_shape("fgd_loss", fg_weight=fg, bg_weight=bg, positions=student[:, 0])
    check_finite("fgd_loss", student=student, teacher=teacher)
    s, t = upcast(student), upcast(teacher.detach())
    att_s_t, att_c_t = fgd_attention(t, temperature)
    att_s_s, att_c_s = fgd_attention(s, temperature)
    weighted = (t - s).pow(2) * att_c_t[:, :, None, None] * att_s_t[:, None]  # (B, C, H, W)
    per_pos = weighted.sum(dim=1)  # (B, H, W)
    focal = alpha_fg * (per_pos * fg.to(per_pos.dtype)).sum() + beta_bg * (per_pos * bg.to(per_pos.dtype)).sum()
    attention = gamma_attention * ((att_s_t - att_s_s).abs().sum() + (att_c_t - att_c_s).abs().sum())
    loss = focal + attention
    if relation is not None and lambda_global:
        loss = loss + lambda_global * (relation(t) - relation(s)).pow(2).sum()
    return loss / b
