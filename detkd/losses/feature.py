"""Feature-imitation losses: pure functions on (adapted) student and teacher feature maps."""

from __future__ import annotations

from torch import Tensor

from detkd.losses._checks import check_finite, check_same_shape, masked_reduce, upcast


def masked_mse(student: Tensor, teacher: Tensor, *, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """Masked feature imitation (FitNets, Romero et al., ICLR 2015; masked as in Wang et al., CVPR 2019).

    ``L = sum_{b,h,w} m_bhw * mean_c (s_bchw - t_bchw)^2 / sum_{b,h,w} m_bhw``

    The student map is expected to be already projected to the teacher's channels by an adapter. The teacher is
    treated as a constant (its gradient is cut here, so a caller cannot train the teacher by mistake).

    Args:
        student: adapted student map.
        teacher: teacher map of the same shape.
        mask: optional non-negative weights per position (1 = imitate, 0 = ignore); None imitates everywhere.
        reduction: ``"mean"`` (normalised by the mask's sum) or ``"sum"``.

    Shape:
        student, teacher: (B, C, H, W); mask: (B, 1, H, W) or (B, H, W). Returns a scalar.

    Returns 0 (still attached to the student's graph) when the mask is empty.

    >>> import torch
    >>> s = torch.zeros(1, 2, 2, 2); t = torch.ones(1, 2, 2, 2)
    >>> float(masked_mse(s, t))
    1.0
    >>> m = torch.zeros(1, 1, 2, 2); m[0, 0, 0, 0] = 1
    >>> float(masked_mse(s, t * 3, mask=m))
    9.0
    """
    check_same_shape("masked_mse", student=student, teacher=teacher)
    if student.dim() != 4:
        raise ValueError(f"masked_mse: expected (B, C, H, W) maps, got {tuple(student.shape)}")
    check_finite("masked_mse", student=student, teacher=teacher)
    per_pos = (upcast(student) - upcast(teacher.detach())).pow(2).mean(dim=1)  # (B, H, W)
    if mask is not None:
        mask = mask.reshape(per_pos.shape) if mask.dim() == 4 else mask
        check_same_shape("masked_mse", per_position=per_pos, mask=mask)
    return masked_reduce(per_pos, mask, reduction)
