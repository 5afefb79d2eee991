"""Class-head (logit) distillation for sigmoid detection heads."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from detkd.losses._checks import check_finite, check_same_shape, check_temperature, masked_reduce, softened_kl, upcast

WEIGHTINGS = ("none", "bckd", "quality")


def binary_kl(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Element-wise KL(Bernoulli(sigmoid(t)) || Bernoulli(sigmoid(s))), computed from logits without overflow.

    >>> import torch
    >>> float(binary_kl(torch.tensor(0.3), torch.tensor(0.3)))
    0.0
    """
    log_ps, log_1ms = F.logsigmoid(student_logits), F.logsigmoid(-student_logits)
    log_pt, log_1mt = F.logsigmoid(teacher_logits), F.logsigmoid(-teacher_logits)
    pt = log_pt.exp()
    return pt * (log_pt - log_ps) + (1.0 - pt) * (log_1mt - log_1ms)


def sigmoid_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    normalizer: Tensor | float | None = None,
    normalizer_floor: float = 1e-6,
    reduction: str = "mean",
    weighting: str = "none",
    gamma: float = 1.0,
    class_weights: Tensor | None = None,
) -> Tensor:
    """Temperature-softened KD for sigmoid class heads (Hinton et al., 2015, per class as binary distributions).

    YOLO class heads score each class with its own sigmoid, so the soft target of class c at anchor a is
    ``sigmoid(t_ca / T)`` and the loss is the binary KL to ``sigmoid(s_ca / T)``, summed over classes and scaled by
    ``T^2`` so that its gradient keeps its magnitude as T changes:

    ``L = T^2 * sum_{b,a} m_ba * sum_c KL(sigmoid(t_bca/T) || sigmoid(s_bca/T)) / N``

    with N = ``normalizer`` when given (e.g. the teacher's total confidence mass, as YOLO normalises its class loss
    by the sum of target scores), else the mask's sum (or the number of anchors). Zero when student equals teacher.

    ``weighting`` changes the class term:

    * ``bckd`` (BCKD, Yang et al., ICCV 2023, as its reference code computes it): the term is the binary
      cross-entropy to the teacher's softened score times ``|p_t - p_s|^gamma`` (gamma is the paper's beta, 1 by
      default), the weight *not* detached, so it is a focal-style loss whose gradient also pushes through the
      weight: classes the student already matches fade out and the few disagreeing anchors among thousands of
      easy background ones drive the gradient. (BCE and the binary KL differ by the teacher's entropy, a constant
      that matters here because it is multiplied by a weight that depends on the student.) Zero when student
      equals teacher;
    * ``quality``: the teacher's max class probability at the anchor (detached), trusting confident teacher
      positions more.

    Args:
        student_logits: raw student class logits.
        teacher_logits: raw teacher class logits (treated as constants).
        temperature: T > 0.
        mask: optional (B, A) non-negative weights per anchor.
        normalizer: optional divisor for ``reduction="mean"``.
        normalizer_floor: the divisor is at least this (YOLO's class loss uses 1 for its target-score mass).
        reduction: ``"mean"`` or ``"sum"``.
        weighting: ``none``, ``bckd`` or ``quality``.
        gamma: exponent of the ``bckd`` weight (BCKD's beta).
        class_weights: optional (C,) per-class weights (0 leaves a class out, e.g. one no teacher class maps to).

    Shape:
        student_logits, teacher_logits: (B, C, A). Returns a scalar.

    >>> import torch
    >>> s = torch.zeros(1, 2, 3); t = torch.zeros(1, 2, 3)
    >>> float(sigmoid_kd(s, t, temperature=2.0))
    0.0
    >>> t[0, 0, 0] = 4.0
    >>> round(float(sigmoid_kd(s, t, temperature=1.0, reduction="sum")), 4)
    0.6031
    """
    check_same_shape("sigmoid_kd", student=student_logits, teacher=teacher_logits)
    if student_logits.dim() != 3:
        raise ValueError(f"sigmoid_kd: expected (B, C, A) logits, got {tuple(student_logits.shape)}")
    check_temperature("sigmoid_kd", temperature)
    check_finite("sigmoid_kd", student=student_logits, teacher=teacher_logits)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"sigmoid_kd: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    t = temperature
    s_t, t_t = upcast(student_logits) / t, upcast(teacher_logits.detach()) / t
    if weighting == "bckd":
        p_t = t_t.sigmoid()
        kl = F.binary_cross_entropy_with_logits(s_t, p_t, reduction="none") * (p_t - s_t.sigmoid()).abs().pow(gamma)
    else:
        kl = binary_kl(s_t, t_t)  # (B, C, A)
    if weighting == "quality":
        kl = kl * upcast(teacher_logits.detach()).sigmoid().amax(dim=1, keepdim=True)
    if class_weights is not None:
        if class_weights.shape != (kl.shape[1],):
            raise ValueError(f"sigmoid_kd: class_weights must be ({kl.shape[1]},), got {tuple(class_weights.shape)}")
        kl = kl * class_weights.to(kl.dtype).view(1, -1, 1)
    per_anchor = kl.sum(dim=1)  # (B, A)
    if mask is not None:
        check_same_shape("sigmoid_kd", per_anchor=per_anchor, mask=mask)
    return masked_reduce(per_anchor, mask, reduction, normalizer, normalizer_floor) * (t * t)


def softmax_kd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    *,
    temperature: float = 1.0,
    mask: Tensor | None = None,
    normalizer: Tensor | float | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Hinton et al. (2015) KD: softmax over classes at each anchor, KL scaled by ``T^2``.

    ``L = T^2 * sum_{b,a} m_ba * KL(softmax(t_ba / T) || softmax(s_ba / T)) / N``

    For comparison with :func:`sigmoid_kd`: YOLO's classes are independent sigmoids with no background class, so
    a softmax over them discards how confident the teacher is that there is an object at all (a background anchor
    becomes a near-uniform distribution to imitate). Use it at teacher-confident positions. At T = 1 it equals
    ``F.kl_div(log_softmax(s), log_softmax(t), log_target=True)``. Zero when student equals teacher.

    Shape:
        student_logits, teacher_logits: (B, C, A). Returns a scalar.

    >>> import torch
    >>> s = torch.zeros(1, 2, 1); t = torch.tensor([[[2.0], [0.0]]])
    >>> round(float(softmax_kd(s, t)), 4)
    0.3278
    """
    check_same_shape("softmax_kd", student=student_logits, teacher=teacher_logits)
    if student_logits.dim() != 3:
        raise ValueError(f"softmax_kd: expected (B, C, A) logits, got {tuple(student_logits.shape)}")
    check_temperature("softmax_kd", temperature)
    check_finite("softmax_kd", student=student_logits, teacher=teacher_logits)
    t = temperature
    per_anchor = softened_kl(student_logits, teacher_logits, t, dim=1)  # (B, A)
    if mask is not None:
        check_same_shape("softmax_kd", per_anchor=per_anchor, mask=mask)
    return masked_reduce(per_anchor, mask, reduction, normalizer) * (t * t)
