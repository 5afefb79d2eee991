"""Feature-imitation losses: pure functions on (adapted) student and teacher feature maps."""

from __future__ import annotations

import torch
from torch import Tensor

from detkd.losses._checks import check_finite, check_same_shape, check_temperature, masked_reduce, softened_kl, upcast


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
    _check_maps("masked_mse", student, teacher)
    per_pos = (upcast(student) - upcast(teacher.detach())).pow(2).mean(dim=1)  # (B, H, W)
    return masked_reduce(per_pos, _feature_mask(mask, per_pos, "masked_mse"), reduction)


def _feature_mask(mask: Tensor | None, per_pos: Tensor, fn: str) -> Tensor | None:
    if mask is None:
        return None
    if mask.dim() == 4:
        b, h, w = per_pos.shape
        check_same_shape(fn, mask=mask, expected=per_pos.new_empty(b, 1, h, w))
        mask = mask[:, 0]
    check_same_shape(fn, per_position=per_pos, mask=mask)
    return mask


def _check_maps(fn: str, student: Tensor, teacher: Tensor) -> None:
    check_same_shape(fn, student=student, teacher=teacher)
    if student.dim() != 4:
        raise ValueError(f"{fn}: expected (B, C, H, W) maps, got {tuple(student.shape)}")
    check_finite(fn, student=student, teacher=teacher)


def channel_wise_kd(student: Tensor, teacher: Tensor, *, temperature: float = 1.0) -> Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021): each channel as a distribution over positions.

    ``phi(y_c) = softmax_{hw}(y_c / tau)``; ``L = tau^2 / (B * C) * sum_{b,c} KL(phi(t_bc) || phi(s_bc))``

    Channels of a dense map highlight where their pattern is; matching these spatial distributions lets the
    student copy what each channel attends to rather than its raw magnitude. Zero when student equals teacher
    (and, since softmax ignores a shift, when a channel differs by a constant).

    Shape:
        student, teacher: (B, C, H, W); the student already projected to the teacher's channels. Returns a scalar.

    >>> import torch
    >>> s = torch.zeros(1, 1, 1, 2); t = torch.tensor([[[[0.0, 2.0]]]])
    >>> round(float(channel_wise_kd(s, t)), 4)  # KL([0.1192, 0.8808] || [0.5, 0.5])
    0.3278
    """
    _check_maps("channel_wise_kd", student, teacher)
    check_temperature("channel_wise_kd", temperature)
    tau = temperature
    kl = softened_kl(student.flatten(2), teacher.flatten(2), tau, dim=-1)  # (B, C)
    return kl.mean() * (tau * tau)


def standardize_channels(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Zero mean and unit variance per channel, over batch and positions (PKD's normalisation).

    The variance floor is relative: ``eps`` times the map's mean channel variance (plus the dtype's tiniest
    number, for an all-constant map), so scaling the map by any factor leaves the result unchanged, also for maps
    whose spread is tiny (an absolute floor would dominate their variance and break PKD's scale invariance); a
    channel far quieter than the map's others is still damped rather than blown up.

    >>> import torch
    >>> y = standardize_channels(torch.arange(8.0).view(1, 2, 2, 2))
    >>> [round(v, 3) for v in y.mean(dim=(0, 2, 3)).tolist()], round(float(y.pow(2).mean()), 3)
    ([0.0, 0.0], 1.0)
    >>> x = torch.randn(2, 3, 4, 4)
    >>> bool(torch.allclose(standardize_channels(1e-5 * x), standardize_channels(x), atol=1e-5))
    True
    """
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = x.var(dim=(0, 2, 3), keepdim=True, unbiased=False)
    floor = eps * var.mean() + torch.finfo(var.dtype).tiny
    return (x - mean) / (var + floor).sqrt()


def pearson_kd(student: Tensor, teacher: Tensor, *, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
    """PKD (Cao et al., NeurIPS 2022): imitation of per-channel standardised maps, i.e. of their correlation.

    ``L = 1/2 * sum_{b,h,w} m_bhw * mean_c (s^_bchw - t^_bchw)^2 / sum m``, where ``x^`` is ``x`` standardised per
    channel. With ``m = 1`` this is ``1 - r`` averaged over channels (r: Pearson correlation of student and teacher
    channel), so it ignores the teacher's scale and offset: the choice for teachers from another family whose
    feature magnitudes differ from the student's. Zero when student equals teacher.

    Shape:
        student, teacher: (B, C, H, W); mask: (B, 1, H, W) or (B, H, W). Returns a scalar.

    >>> import torch
    >>> s = torch.randn(2, 3, 4, 4)
    >>> round(float(pearson_kd(s, 5.0 * s + 2.0)), 6)
    0.0
    """
    _check_maps("pearson_kd", student, teacher)
    s = standardize_channels(upcast(student))
    t = standardize_channels(upcast(teacher.detach()))
    per_pos = 0.5 * (s - t).pow(2).mean(dim=1)
    return masked_reduce(per_pos, _feature_mask(mask, per_pos, "pearson_kd"), reduction)
