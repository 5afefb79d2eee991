"""Automatic balancing of KD terms against the detection loss, by loss magnitude or by gradient norm.

A KD term whose magnitude dwarfs the detection loss takes over training: reported in the field as mAP that falls
below the baseline and, with a large feature or box term under AMP, NaNs within an epoch. Fixed weights tuned on
one dataset do not carry over, because feature magnitudes change with the teacher, the image size and the epoch.
:class:`KDBalancer` rescales each term every step so that its share stays at a target ratio to the detection loss.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

MODES = ("loss", "grad")


def grad_norm(loss: Tensor, shared: Sequence[Tensor]) -> Tensor:
    """L2 norm of ``d loss / d shared`` (the graph is kept; tensors the loss does not reach count as zero)."""
    grads = torch.autograd.grad(loss, list(shared), retain_graph=True, allow_unused=True)
    squares = [g.float().pow(2).sum() for g in grads if g is not None]
    return torch.stack(squares).sum().sqrt() if squares else loss.new_zeros(()).float()


class KDBalancer:
    """Keeps ``measure(weighted KD term) / measure(detection loss)`` at a target for each term.

    ``measure`` is the loss value (``mode="loss"``, free) or the norm of the term's gradient on the tensors every
    term shares, the student's neck maps (``mode="grad"``, one extra partial backward through the head per term
    every ``interval`` steps). Magnitudes are averaged with ``momentum``; the factor is capped by ``max_scale``.
    Everything stays on the device (no host sync).

    Args:
        mode: ``loss`` or ``grad``.
        momentum: exponential-average momentum of the measured magnitudes.
        interval: steps between gradient measurements (``grad``).
        max_scale: cap on each factor.

    >>> b = KDBalancer("loss")
    >>> det = torch.tensor(2.0); kd = torch.tensor(8.0, requires_grad=True)
    >>> scales = b.scales({"kd/feat": kd}, det, targets={"kd/feat": 0.5}, shared=[])
    >>> float(scales["kd/feat"] * kd.detach()), float(b.ratios["kd/feat"])
    (1.0, 0.5)
    """

    def __init__(self, mode: str, *, momentum: float = 0.9, interval: int = 10, max_scale: float = 1000.0) -> None:
        if mode not in MODES:
            raise ValueError(f"KDBalancer: mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.momentum = momentum
        self.interval = interval
        self.max_scale = max_scale
        self.steps = 0
        self._avg: dict[str, Tensor] = {}
        self._scale: dict[str, Tensor] = {}
        self.ratios: dict[str, Tensor] = {}

    def state_dict(self) -> dict[str, Any]:
        """Running magnitudes and factors (saved in ``resume.pt`` so a resumed run balances as before)."""
        return {"steps": self.steps, "avg": dict(self._avg), "scale": dict(self._scale)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        self._avg = dict(state["avg"])
        self._scale = dict(state["scale"])

    def _update(self, key: str, value: Tensor) -> Tensor:
        value = value.detach().float()
        prev = self._avg.get(key)
        self._avg[key] = value if prev is None else self.momentum * prev + (1.0 - self.momentum) * value
        return self._avg[key]

    def scales(
        self, terms: dict[str, Tensor], det: Tensor, *, targets: dict[str, float], shared: Sequence[Tensor]
    ) -> dict[str, Tensor]:
        """Factors to multiply each (unweighted) term by; updates :attr:`ratios` (measured share per term).

        Args:
            terms: active unweighted KD terms (scalars in the graph).
            det: the detection loss (scalar in the graph).
            targets: target ratio per term.
            shared: tensors all terms depend on (for ``grad``).
        """
        measure_grads = self.mode == "grad" and self.steps % self.interval == 0
        self.steps += 1
        if self.mode == "loss":
            det_m = self._update("det", det)
            for k, v in terms.items():
                avg = self._update(k, v)
                self._scale[k] = (targets[k] * det_m / avg.clamp(min=1e-12)).clamp(max=self.max_scale)
                self.ratios[k] = self._scale[k] * v.detach().float() / det.detach().float().clamp(min=1e-12)
        elif measure_grads:
            g_det = grad_norm(det, shared)
            det_m = self._update("det", g_det)
            for k, v in terms.items():
                g = grad_norm(v, shared)
                avg = self._update(k, g)
                self._scale[k] = (targets[k] * det_m / avg.clamp(min=1e-12)).clamp(max=self.max_scale)
                self.ratios[k] = self._scale[k] * g / g_det.clamp(min=1e-12)
        one = det.new_ones(()).float()
        return {k: self._scale.get(k, one) for k in terms}
