"""Entry checks and reductions shared by the loss functions."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

REDUCTIONS = ("mean", "sum")

# Under DDP: (mean of a tensor over ranks, world size); see normalise_over_ranks.
_OVER_RANKS: tuple[Callable[[Tensor], Tensor], int] | None = None


@contextlib.contextmanager
def normalise_over_ranks(rank_mean: Callable[[Tensor], Tensor], world_size: int) -> Iterator[None]:
    """Inside, :func:`masked_reduce` divides by the normaliser of the *global* batch (its mean over ranks).

    A masked mean is a ratio of sums (weighted loss / mask total). Per rank, the mean over ranks of per-rank ratios
    is not the ratio of the global batch, and a floor on the normaliser (e.g. 1) binds per rank where it would not
    globally. With the normaliser averaged over ranks, each rank's term is ``world_size * sum_r / N_global``; DDP's
    gradient average then gives exactly the single-process gradient of the global batch, and the logged terms
    averaged over ranks equal the single-process terms. Every rank must call the losses in the same order.
    """
    global _OVER_RANKS
    previous, _OVER_RANKS = _OVER_RANKS, (rank_mean, world_size)
    try:
        yield
    finally:
        _OVER_RANKS = previous


def upcast(x: Tensor) -> Tensor:
    """Compute losses in at least float32 (AMP gives fp16/bf16 inputs) without lowering float64 inputs."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def check_same_shape(fn: str, **tensors: Tensor) -> None:
    """Raise ``ValueError`` naming ``fn`` when the given tensors differ in shape."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{k}={v}" for k, v in shapes.items())
        raise ValueError(f"{fn}: shapes differ: {described}")


def check_temperature(fn: str, temperature: float) -> None:
    """Raise ``ValueError`` naming ``fn`` unless ``temperature > 0``."""
    if temperature <= 0:
        raise ValueError(f"{fn}: temperature must be > 0, got {temperature}")


def softened_kl(student: Tensor, teacher: Tensor, temperature: float, dim: int) -> Tensor:
    """``KL(softmax(t / T) || softmax(s / T))`` along ``dim`` (that dim is summed out); the teacher is a constant.

    >>> s = torch.zeros(1, 2); t = torch.tensor([[2.0, 0.0]])
    >>> round(float(softened_kl(s, t, 1.0, dim=1)), 4)
    0.3278
    """
    log_ps = F.log_softmax(upcast(student) / temperature, dim=dim)
    log_pt = F.log_softmax(upcast(teacher.detach()) / temperature, dim=dim)
    return (log_pt.exp() * (log_pt - log_ps)).sum(dim=dim)


def all_finite(t: Tensor) -> bool:
    """True when ``t`` holds no NaN or Inf.

    A NaN or Inf anywhere makes the sum non-finite, so a finite sum proves the tensor finite with one read and no
    temporary (20x cheaper than ``isfinite(t).all()`` on a neck map on CPU); only a non-finite sum, which a large
    but finite tensor can also give by overflow, takes the elementwise check.

    >>> all_finite(torch.tensor([1.0, 3e38, 3e38])), all_finite(torch.tensor([1.0, float("nan")]))
    (True, False)
    """
    if not t.is_floating_point() and not t.is_complex():
        return True
    total = t.sum(dtype=torch.float32) if t.dtype in (torch.float16, torch.bfloat16) else t.sum()
    return bool(torch.isfinite(total)) or bool(torch.isfinite(t).all())


def check_finite(fn: str, **tensors: Tensor) -> None:
    """Raise ``ValueError`` when an input holds NaN or Inf.

    This syncs with the device once per tensor; losses are called a handful of times per step, and training on a
    silent NaN costs far more.
    """
    for name, t in tensors.items():
        if not all_finite(t):
            raise ValueError(f"{fn}: {name} contains NaN or Inf")


def masked_reduce(
    values: Tensor,
    mask: Tensor | None,
    reduction: str,
    normalizer: Tensor | float | None = None,
    floor: float = 1e-6,
) -> Tensor:
    """Weighted sum of ``values`` over all positions, divided by the weight total (or ``normalizer``), at least
    ``floor``; under :func:`normalise_over_ranks` the divisor is the global batch's.

    An empty mask gives zero, still attached to the graph so backward works.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    weighted = values if mask is None else values * mask.to(values.dtype)
    total = weighted.sum()
    if reduction == "sum":
        return total
    if normalizer is None:
        normalizer = values.new_tensor(float(values.numel())) if mask is None else mask.to(values.dtype).sum()
    norm = torch.as_tensor(normalizer, dtype=values.dtype, device=values.device)
    if _OVER_RANKS is not None:
        rank_mean, world_size = _OVER_RANKS
        norm, floor = rank_mean(norm.detach()).to(values.dtype), floor / world_size
    # An empty mask makes both sums zero: 0 / floor stays 0 and keeps the graph, with no host sync.
    return total / norm.clamp(min=floor)
