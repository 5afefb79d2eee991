"""MGD: masked generative distillation (Yang et al., ECCV 2022), a pure loss and its generator."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detkd.losses._checks import check_finite, check_same_shape, upcast


class MGDGenerator(nn.Module):
    """The paper's generator: 3x3 conv, ReLU, 3x3 conv, at the teacher's channel count."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net(x)
        return out


def random_keep_mask(student: Tensor, mask_ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """A (B, 1, H, W) mask that drops each position with probability ``mask_ratio`` (1 = kept)."""
    b, _, h, w = student.shape
    draw = torch.rand((b, 1, h, w), device=student.device, generator=generator)
    return (draw >= mask_ratio).to(student.dtype)


def mgd_loss(student: Tensor, teacher: Tensor, *, generator: nn.Module, keep: Tensor) -> Tensor:
    """Masked generative distillation: the student must *generate* the teacher map from a masked copy of its own.

    ``L = mean_{b,c,h,w} (G(keep * s) - t)^2``

    where ``s`` is the student map aligned to the teacher's channels, ``keep`` zeroes a random ``mask_ratio`` of
    positions (:func:`random_keep_mask`) and ``G`` is :class:`MGDGenerator`. The paper sums over elements with
    ``alpha_mgd = 2e-5``; the mean here equals that sum times ``1 / (C * H * W)``, so weights carry across image
    sizes. Its minimum is reached when ``G`` reconstructs the teacher: zero for an identity ``G``, no masking and
    equal maps.

    Shape:
        student, teacher: (B, C, H, W); keep: (B, 1, H, W). Returns a scalar.

    >>> s = torch.randn(2, 3, 4, 4)
    >>> float(mgd_loss(s, s.clone(), generator=nn.Identity(), keep=torch.ones(2, 1, 4, 4)))
    0.0
    """
    check_same_shape("mgd_loss", student=student, teacher=teacher)
    if student.dim() != 4 or keep.shape != (student.shape[0], 1, *student.shape[2:]):
        raise ValueError(
            f"mgd_loss: expected (B, C, H, W) maps and a (B, 1, H, W) mask, got {tuple(student.shape)} and "
            f"{tuple(keep.shape)}"
        )
    check_finite("mgd_loss", student=student, teacher=teacher)
    s, t = upcast(student), upcast(teacher.detach())
    generated: Tensor = generator(s * keep.to(s.dtype))
    return (generated.to(s.dtype) - t).pow(2).mean()
