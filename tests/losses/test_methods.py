"""Properties every KD loss must have (one parametrized table of methods), then reference values per method."""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkd.losses.box import bounded_l2_loss, box_iou_l1_loss, ld_loss
from detkd.losses.feature import channel_wise_kd, masked_mse, pearson_kd
from detkd.losses.fgd import GlobalRelation, fgd_loss
from detkd.losses.logit import sigmoid_kd, softmax_kd
from detkd.losses.masks import fgd_weights, fine_grained_masks
from detkd.losses.mgd import MGDGenerator, mgd_loss, random_keep_mask

MAP = (2, 4, 2, 3)  # B, C, H, W: H != W, so a transposed mask cannot pass unnoticed
GRID, STRIDES = [(2, 3)], [8]  # MAP's grid: a 16 x 24 pixel image at stride 8
LOGITS = (2, 3, 5)  # B, C, A
REG_MAX = 4
DIST = (2, 4 * REG_MAX, 3)  # B, 4 * reg_max, A
BOXES = (2, 4, 3)  # B, 4, A
GT_BOXES = torch.tensor([[0.0, 0.0, 12.0, 12.0], [8.0, 0.0, 24.0, 16.0]])  # xyxy pixels, one box per image
GT_IDX = torch.tensor([0, 1])
NO_BOXES, NO_IDX = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
FGD_KW = {"alpha_fg": 1.0, "beta_bg": 0.5, "gamma_attention": 0.05, "lambda_global": 0.5}


# ----------------------------------------------------------------------------------------------- inputs and helpers


def _weights(b: int, n: int, dtype: torch.dtype) -> Tensor:
    """(B, N) weights cycling 1, 0, 0.5: neither empty nor all ones, with a fractional weight."""
    return torch.tensor([1.0, 0.0, 0.5], dtype=dtype).repeat(b * n)[: b * n].view(b, n)


def _map_mask(dtype: torch.dtype) -> Tensor:
    b, _, h, w = MAP
    return _weights(b, h * w, dtype).view(b, 1, h, w)


def _anchor_mask(shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    return _weights(shape[0], shape[2], dtype)


def _fine_mask(boxes: Tensor, idx: Tensor, dtype: torch.dtype) -> Tensor:
    (mask,) = fine_grained_masks(boxes.to(dtype), idx, MAP[0], GRID, STRIDES)
    return mask


def _fgd(s: Tensor, t: Tensor, relation: bool) -> Tensor:
    ((fg, bg),) = fgd_weights(GT_BOXES.to(s.dtype), GT_IDX, MAP[0], GRID, STRIDES)
    return fgd_loss(s, t, fg_weight=fg, bg_weight=bg, relation=_relation(s.dtype) if relation else None, **FGD_KW)


def _fgd_empty(s: Tensor, t: Tensor, relation: bool) -> Tensor:
    """No foreground and no background weight; the unmasked attention and global terms switched off."""
    zeros = torch.zeros(MAP[0], *MAP[2:], dtype=s.dtype)
    rel = _relation(s.dtype) if relation else None
    return fgd_loss(s, t, fg_weight=zeros, bg_weight=zeros, gamma_attention=0.0, lambda_global=0.0, relation=rel)


@functools.cache
def _relation(dtype: torch.dtype) -> GlobalRelation:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        rel = GlobalRelation(MAP[1])
        nn.init.normal_(rel.transform[-1].weight, std=0.5)  # off the identity start: exercise the whole block
    return rel.to(dtype).requires_grad_(False)


@functools.cache
def _mgd_generator(dtype: torch.dtype) -> MGDGenerator:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        gen = MGDGenerator(MAP[1])
    return gen.to(dtype).requires_grad_(False)


def _keep(dtype: torch.dtype) -> Tensor:
    return (_map_mask(dtype) > 0).to(dtype)  # a fixed keep mask that drops a third of the positions


def _target(like: Tensor) -> Tensor:
    """A fixed ground truth for bounded_l2, shaped like its inputs."""
    return torch.linspace(-1.0, 1.0, like.numel(), dtype=like.dtype).view(like.shape)


def _map_pair(gen: torch.Generator, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    t = torch.randn(MAP, generator=gen, dtype=dtype)
    return t + 0.5 * torch.randn(MAP, generator=gen, dtype=dtype), t  # per-position noise, not a channel shift


def _logit_pair(shape: tuple[int, ...]) -> Callable[[torch.Generator, torch.dtype], tuple[Tensor, Tensor]]:
    def make(gen: torch.Generator, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        t = 2.0 * torch.randn(shape, generator=gen, dtype=dtype)
        return t + torch.randn(shape, generator=gen, dtype=dtype), t

    return make


def _box_pair(gen: torch.Generator, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    b, _, a = BOXES
    xy = 4.0 * torch.rand((b, 2, a), generator=gen, dtype=dtype)
    wh = 2.0 + 4.0 * torch.rand((b, 2, a), generator=gen, dtype=dtype)
    t = torch.cat((xy, xy + wh), dim=1)
    return t + 0.8 * torch.rand(BOXES, generator=gen, dtype=dtype) - 0.4, t  # shifted by < 0.4: still valid boxes


def _bounded_pair(gen: torch.Generator, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    t = torch.randn(BOXES, generator=gen, dtype=dtype)
    y = _target(t)
    return y + 2.0 * (t - y), t  # the student's error is 4x the teacher's everywhere: far from the switch


def _cat_kl(t_logits: Tensor, s_logits: Tensor, dim: int) -> Tensor:
    """KL(softmax(t) || softmax(s)) along ``dim``, written from the definition."""
    pt = t_logits.exp() / t_logits.exp().sum(dim, keepdim=True)
    ps = s_logits.exp() / s_logits.exp().sum(dim, keepdim=True)
    return (pt * (pt / ps).log()).sum(dim)


def _bern_kl(t_logits: Tensor, s_logits: Tensor) -> Tensor:
    """KL(Bernoulli(sigmoid(t)) || Bernoulli(sigmoid(s))) element-wise, from the definition."""
    pt, ps = 1.0 / (1.0 + (-t_logits).exp()), 1.0 / (1.0 + (-s_logits).exp())
    return pt * (pt / ps).log() + (1.0 - pt) * ((1.0 - pt) / (1.0 - ps)).log()


def _softmax_math(xs: list[float]) -> list[float]:
    z = sum(math.exp(x) for x in xs)
    return [math.exp(x) / z for x in xs]


def _kl_math(t_logits: list[float], s_logits: list[float]) -> float:
    pt, ps = _softmax_math(t_logits), _softmax_math(s_logits)
    return sum(p * math.log(p / q) for p, q in zip(pt, ps))


def _rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: a second intra-op thread only adds contention (seconds per gradcheck on 2 vCPUs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -------------------------------------------------------------------------------------------------- the method table


@dataclass(frozen=True)
class Case:
    name: str
    loss: Callable[[Tensor, Tensor], Tensor]  # (student, teacher) -> scalar, every other input fixed
    make: Callable[[torch.Generator, torch.dtype], tuple[Tensor, Tensor]]  # (a student that differs, teacher)
    at_equal: Callable[[Tensor, Tensor], Tensor] | None = None  # the setting in which student == teacher gives 0
    empty: Callable[[Tensor, Tensor], Tensor] | None = None  # the loss with an empty foreground / all-zero mask
    lr: float = 0.1
    zero_atol: float = 0.0
    gradcheck: bool = True


def _bce(weighting: str) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda s, t: sigmoid_kd(s, t, temperature=2.0, weighting=weighting, mask=_anchor_mask(LOGITS, s.dtype))


def _bce_empty(weighting: str) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda s, t: sigmoid_kd(s, t, weighting=weighting, mask=torch.zeros(LOGITS[0], LOGITS[2], dtype=s.dtype))


def _iou(kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda s, t: box_iou_l1_loss(s, t, kind=kind, mask=_anchor_mask(BOXES, s.dtype), scale=torch.ones(3))


def _iou_empty(kind: str) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda s, t: box_iou_l1_loss(s, t, kind=kind, mask=torch.zeros(BOXES[0], BOXES[2], dtype=s.dtype))


CASES = [
    Case(
        "mse",
        lambda s, t: masked_mse(s, t, mask=_map_mask(s.dtype)),
        _map_pair,
        empty=lambda s, t: masked_mse(s, t, mask=torch.zeros_like(_map_mask(s.dtype))),
    ),
    Case(
        "fine_grained",
        lambda s, t: masked_mse(s, t, mask=_fine_mask(GT_BOXES, GT_IDX, s.dtype)),
        _map_pair,
        empty=lambda s, t: masked_mse(s, t, mask=_fine_mask(NO_BOXES, NO_IDX, s.dtype)),
    ),
    Case(
        "fgd",
        lambda s, t: _fgd(s, t, relation=False),
        _map_pair,
        empty=lambda s, t: _fgd_empty(s, t, relation=False),
    ),
    Case(
        "fgd_relation",
        lambda s, t: _fgd(s, t, relation=True),
        _map_pair,
        empty=lambda s, t: _fgd_empty(s, t, relation=True),
    ),
    Case("cwd", lambda s, t: channel_wise_kd(s, t, temperature=2.0), _map_pair, lr=1.0),
    Case(
        "mgd",
        lambda s, t: mgd_loss(s, t, generator=_mgd_generator(s.dtype), keep=_keep(s.dtype)),
        _map_pair,
        at_equal=lambda s, t: mgd_loss(s, t, generator=nn.Identity(), keep=torch.ones(MAP[0], 1, *MAP[2:])),
    ),
    Case(
        "pkd",
        lambda s, t: pearson_kd(s, t, mask=_map_mask(s.dtype)),
        _map_pair,
        empty=lambda s, t: pearson_kd(s, t, mask=torch.zeros_like(_map_mask(s.dtype))),
    ),
    Case("bce_none", _bce("none"), _logit_pair(LOGITS), empty=_bce_empty("none")),
    Case("bce_bckd", _bce("bckd"), _logit_pair(LOGITS), empty=_bce_empty("bckd"), lr=1.0, gradcheck=False),
    Case("bce_quality", _bce("quality"), _logit_pair(LOGITS), empty=_bce_empty("quality")),
    Case(
        "kl",
        lambda s, t: softmax_kd(s, t, temperature=2.0, mask=_anchor_mask(LOGITS, s.dtype)),
        _logit_pair(LOGITS),
        empty=lambda s, t: softmax_kd(s, t, mask=torch.zeros(LOGITS[0], LOGITS[2], dtype=s.dtype)),
    ),
    Case(
        "ld",
        lambda s, t: ld_loss(s, t, reg_max=REG_MAX, temperature=2.0, mask=_anchor_mask(DIST, s.dtype)),
        _logit_pair(DIST),
        empty=lambda s, t: ld_loss(s, t, reg_max=REG_MAX, mask=torch.zeros(DIST[0], DIST[2], dtype=s.dtype)),
    ),
    Case("iou_giou", _iou("giou"), _box_pair, empty=_iou_empty("giou"), zero_atol=1e-6),
    Case("iou_iou", _iou("iou"), _box_pair, empty=_iou_empty("iou"), zero_atol=1e-6),
    Case(
        "bounded_l2",
        lambda s, t: bounded_l2_loss(s, t, _target(s), mask=_anchor_mask(BOXES, s.dtype)),
        _bounded_pair,
        empty=lambda s, t: bounded_l2_loss(s, t, _target(s), mask=torch.zeros(BOXES[0], BOXES[2], dtype=s.dtype)),
        lr=0.05,
    ),
]
BY_NAME = {c.name: c for c in CASES}


def _ids(case: Case) -> str:
    return case.name


# ------------------------------------------------------------------------------------ properties shared by all methods


def test_table_inputs_are_not_trivial():
    assert torch.get_num_threads() == 1  # the module's fixture ran after the suite-wide thread setting
    fine = _fine_mask(GT_BOXES, GT_IDX, torch.float32)
    ((fg, bg),) = fgd_weights(GT_BOXES, GT_IDX, MAP[0], GRID, STRIDES)
    assert (fine.flatten(1).sum(1) > 0).all() and (fg.flatten(1).sum(1) > 0).all() and (bg.flatten(1).sum(1) > 0).all()
    assert 0 < _keep(torch.float32).sum() < _keep(torch.float32).numel()
    s, t = _box_pair(_rng(), torch.float32)
    assert (s[:, 2:] > s[:, :2]).all() and (t[:, 2:] > t[:, :2]).all()


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_zero_when_student_equals_teacher(case: Case):
    _, t = case.make(_rng(), torch.float32)
    loss = (case.at_equal or case.loss)(t.clone(), t)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(0.0, abs=case.zero_atol)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_positive_when_student_differs(case: Case):
    s, t = case.make(_rng(), torch.float32)
    assert case.loss(s, t).item() > max(case.zero_atol, 1e-6)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_gradient_descent_on_student_lowers_loss_and_spares_teacher(case: Case):
    s0, t = case.make(_rng(2), torch.float64)
    s, t = s0.clone().requires_grad_(True), t.clone().requires_grad_(True)
    opt = torch.optim.SGD([s], lr=case.lr)
    losses = []
    for _ in range(4):
        opt.zero_grad()
        loss = case.loss(s, t)
        loss.backward()
        losses.append(loss.item())
        opt.step()
    assert t.grad is None  # the teacher is a constant
    assert all(after < before for before, after in itertools.pairwise(losses)), losses


@pytest.mark.parametrize("case", [c for c in CASES if c.gradcheck], ids=_ids)
def test_gradcheck_float64(case: Case):
    s, t = case.make(_rng(4), torch.float64)
    assert torch.autograd.gradcheck(lambda x: case.loss(x, t), (s.requires_grad_(True),))


@pytest.mark.parametrize("case", [c for c in CASES if c.empty is not None], ids=_ids)
def test_empty_foreground_is_exactly_zero_and_differentiable(case: Case):
    s, t = case.make(_rng(), torch.float32)
    s.requires_grad_(True)
    assert case.empty is not None
    loss = case.empty(s, t)
    loss.backward()
    assert loss.item() == 0.0
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() == 0


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("which", ["student", "teacher"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_nan_or_inf_input_raises(case: Case, which: str, bad: float):
    s, t = case.make(_rng(), torch.float32)
    (s if which == "student" else t)[(0,) * s.dim()] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        case.loss(s, t)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_student_and_teacher_shapes_must_match(case: Case):
    s, t = case.make(_rng(), torch.float32)
    with pytest.raises(ValueError, match="shapes differ"):
        case.loss(s, torch.cat((t, t[..., :1]), dim=-1))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_wrong_rank_raises(case: Case):
    s, t = case.make(_rng(), torch.float32)
    with pytest.raises(ValueError, match="expected"):
        case.loss(s[0], t[0])  # the batch dimension forgotten


WRONG_MASKS = {  # (case, the loss called with a mask of the wrong shape)
    "mse": lambda s, t: masked_mse(s, t, mask=torch.ones(2, 3, 2)),  # (B, W, H)
    "pkd": lambda s, t: pearson_kd(s, t, mask=torch.ones(2, 3, 2)),
    "fgd": lambda s, t: fgd_loss(s, t, fg_weight=torch.ones(2, 3, 2), bg_weight=torch.ones(2, 3, 2)),
    "bce_none": lambda s, t: sigmoid_kd(s, t, mask=torch.ones(5, 2)),  # (A, B)
    "kl": lambda s, t: softmax_kd(s, t, mask=torch.ones(5, 2)),
    "ld": lambda s, t: ld_loss(s, t, reg_max=REG_MAX, mask=torch.ones(3, 2)),
    "iou_giou": lambda s, t: box_iou_l1_loss(s, t, mask=torch.ones(3, 2)),
    "bounded_l2": lambda s, t: bounded_l2_loss(s, t, _target(s), mask=torch.ones(3, 2)),
}


@pytest.mark.parametrize("name", list(WRONG_MASKS))
def test_mask_of_wrong_shape_raises(name: str):
    s, t = BY_NAME[name].make(_rng(), torch.float32)
    with pytest.raises(ValueError, match="shapes differ"):
        WRONG_MASKS[name](s, t)


@pytest.mark.parametrize(
    "call",
    [
        lambda s, t: masked_mse(s, t, mask=torch.ones(2, 1, 3, 2)),
        lambda s, t: pearson_kd(s, t, mask=torch.ones(2, 1, 3, 2)),
        lambda s, t: fgd_loss(s, t, fg_weight=torch.ones(2, 1, 3, 2), bg_weight=torch.ones(2, 1, 3, 2)),
        lambda s, t: masked_mse(s, t, mask=torch.ones(MAP)),
    ],
    ids=["mse_transposed", "pkd_transposed", "fgd_transposed", "mse_per_channel"],
)
def test_4d_mask_of_wrong_layout_raises(call: Callable[[Tensor, Tensor], Tensor]):
    s, t = _map_pair(_rng(), torch.float32)
    with pytest.raises(ValueError, match="shapes differ"):
        call(s, t)


BAD_OPTIONS = {  # (a call with an invalid option, what the message names)
    "cwd_temperature": (lambda s, t: channel_wise_kd(s, t, temperature=0.0), "temperature"),
    "fgd_temperature": (lambda s, t: _fgd_with(s, t, temperature=-1.0), "temperature"),
    "kl_temperature": (lambda s, t: softmax_kd(s[:, :, 0], t[:, :, 0], temperature=0.0), "temperature"),
    "mse_reduction": (lambda s, t: masked_mse(s, t, reduction="max"), "reduction"),
    "pkd_reduction": (lambda s, t: pearson_kd(s, t, reduction="none"), "reduction"),
    "ld_reg_max": (lambda s, t: ld_loss(s[:, :, 0], t[:, :, 0], reg_max=3), "reg_max"),
    "iou_kind": (lambda s, t: box_iou_l1_loss(s[:, :, 0, :2].abs(), t[:, :, 0, :2].abs(), kind="diou"), "kind"),
}


def _fgd_with(s: Tensor, t: Tensor, **kw: float) -> Tensor:
    zeros = torch.zeros(MAP[0], *MAP[2:])
    return fgd_loss(s, t, fg_weight=zeros, bg_weight=zeros, **kw)


@pytest.mark.parametrize("name", list(BAD_OPTIONS))
def test_invalid_option_raises(name: str):
    call, match = BAD_OPTIONS[name]
    s, t = _map_pair(_rng(), torch.float32)
    with pytest.raises(ValueError, match=match):
        call(s, t)


def test_mgd_keep_mask_of_wrong_shape_raises():
    s, t = _map_pair(_rng(), torch.float32)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\) mask"):
        mgd_loss(s, t, generator=nn.Identity(), keep=torch.ones(MAP))


# --------------------------------------------------------------------------------------------------- reference values


def test_softmax_kd_at_t1_equals_torch_kl_div():
    s, t = torch.randn(2, 5, 7, dtype=torch.float64), torch.randn(2, 5, 7, dtype=torch.float64)
    log_s, log_t = F.log_softmax(s, dim=1), F.log_softmax(t, dim=1)
    ref = F.kl_div(log_s, log_t, log_target=True, reduction="sum") / (2 * 7)  # averaged over B * A anchors
    assert softmax_kd(s, t).item() == pytest.approx(ref.item(), rel=1e-12)
    mask = _weights(2, 7, torch.float64)
    per_anchor = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(dim=1)
    ref_masked = (per_anchor * mask).sum() / mask.sum()
    assert softmax_kd(s, t, mask=mask).item() == pytest.approx(ref_masked.item(), rel=1e-12)


SCALED = {  # method: (loss(s, t, T), the same KL by hand on already softened logits, input shape)
    "bce": (
        lambda s, t, T: sigmoid_kd(s, t, temperature=T),
        lambda s, t: _bern_kl(t, s).sum(dim=1).mean(),
        LOGITS,
    ),
    "kl": (
        lambda s, t, T: softmax_kd(s, t, temperature=T),
        lambda s, t: _cat_kl(t, s, dim=1).mean(),
        LOGITS,
    ),
    "ld": (
        lambda s, t, T: ld_loss(s, t, reg_max=REG_MAX, temperature=T),
        lambda s, t: _cat_kl(t.view(2, 4, REG_MAX, 3), s.view(2, 4, REG_MAX, 3), dim=2).mean(),
        DIST,
    ),
    "cwd": (
        lambda s, t, T: channel_wise_kd(s, t, temperature=T),
        lambda s, t: _cat_kl(t.flatten(2), s.flatten(2), dim=2).mean(),
        MAP,
    ),
}


@pytest.mark.parametrize("name", list(SCALED))
def test_temperature_scales_kl_of_softened_logits_by_t_squared(name: str):
    loss, by_hand, shape = SCALED[name]
    s, t = _logit_pair(shape)(_rng(5), torch.float64)
    values = []
    for temp in (0.5, 1.0, 2.0, 4.0):
        expected = temp**2 * by_hand(s / temp, t / temp)
        values.append(loss(s, t, temp).item())
        assert values[-1] == pytest.approx(expected.item(), rel=1e-9)
    assert len({round(v, 6) for v in values}) == len(values)  # T really changes the loss


def test_cwd_matches_hand_computed_value():
    # C = 2 channels, each a distribution over the 2 x 2 positions
    s = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [3.0, 4.0]]]])
    t = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[4.0, 3.0], [2.0, 1.0]]]])
    e = math.e
    # channel 0: teacher softmax (e, 1, 1, 1) / (e + 3) against a uniform student
    kl0 = e / (e + 3) * math.log(4 * e / (e + 3)) + 3 / (e + 3) * math.log(4 / (e + 3))
    # channel 1: reversed ramps, KL(softmax(4, 3, 2, 1) || softmax(1, 2, 3, 4)) = sum_i p_i * (x_i - y_i)
    p = [math.exp(x) / (math.exp(4) + math.exp(3) + math.exp(2) + math.exp(1)) for x in (4, 3, 2, 1)]
    kl1 = sum(pi * (x - y) for pi, x, y in zip(p, (4, 3, 2, 1), (1, 2, 3, 4)))
    assert kl0 == pytest.approx(_kl_math([1, 0, 0, 0], [0, 0, 0, 0]))
    assert kl1 == pytest.approx(_kl_math([4, 3, 2, 1], [1, 2, 3, 4]))
    assert channel_wise_kd(s, t).item() == pytest.approx((kl0 + kl1) / 2, rel=1e-5)
    halved = (_kl_math([0.5, 0, 0, 0], [0, 0, 0, 0]) + _kl_math([2, 1.5, 1, 0.5], [0.5, 1, 1.5, 2])) / 2
    assert channel_wise_kd(s, t, temperature=2.0).item() == pytest.approx(4 * halved, rel=1e-5)


def test_ld_matches_hand_computed_dfl_bins():
    student_bins = [[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]]
    teacher_bins = [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 1.0], [3.0, 0.0, 0.0, 0.0]]
    s = torch.tensor(student_bins).view(1, 4 * 4, 1)  # (B, 4 * reg_max, A): edge-major, bins inside an edge
    t = torch.tensor(teacher_bins).view(1, 4 * 4, 1)
    for temp in (1.0, 2.0):
        per_edge = [
            _kl_math([x / temp for x in te], [x / temp for x in se]) for te, se in zip(teacher_bins, student_bins)
        ]
        assert per_edge[0] == 0.0 and min(per_edge[1:]) > 0
        expected = temp**2 * sum(per_edge) / 4
        assert ld_loss(s, t, reg_max=4, temperature=temp).item() == pytest.approx(expected, rel=1e-5)


def test_pkd_ignores_teacher_scale_and_offset_also_per_channel():
    gen = _rng(6)
    s, t = torch.randn(2, 4, 3, 3, generator=gen), torch.randn(2, 4, 3, 3, generator=gen)
    base = pearson_kd(s, t).item()
    assert base > 0.1
    assert pearson_kd(s, 7.0 * t - 3.0).item() == pytest.approx(base, abs=1e-5)
    a = torch.tensor([0.5, 2.0, 3.0, 1.5]).view(1, 4, 1, 1)
    b = torch.tensor([-4.0, 0.0, 10.0, 2.5]).view(1, 4, 1, 1)
    assert pearson_kd(s, a * t + b).item() == pytest.approx(base, abs=1e-5)
    mask = torch.rand(2, 1, 3, 3, generator=gen)
    assert pearson_kd(s, a * t + b, mask=mask).item() == pytest.approx(pearson_kd(s, t, mask=mask).item(), abs=1e-5)
    # a negative scale flips every correlation: (1 - r) + (1 + r) = 2
    assert pearson_kd(s, t).item() + pearson_kd(s, -t).item() == pytest.approx(2.0, abs=1e-5)


def test_pkd_without_mask_is_one_minus_pearson_r():
    gen = _rng(7)
    s = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64) + 0.5 * s  # partly correlated
    xs, xt = s.transpose(0, 1).flatten(1), t.transpose(0, 1).flatten(1)  # (C, B*H*W)
    xs, xt = xs - xs.mean(1, keepdim=True), xt - xt.mean(1, keepdim=True)
    r = (xs * xt).sum(1) / (xs.pow(2).sum(1).sqrt() * xt.pow(2).sum(1).sqrt())
    assert pearson_kd(s, t).item() == pytest.approx((1 - r).mean().item(), abs=1e-5)


def test_bounded_l2_is_zero_where_student_beats_teacher_by_margin_else_student_error():
    y = torch.zeros(1, 4, 4)
    t = torch.ones(1, 4, 4)  # teacher error e_t = mean_k 1^2 = 1 at every anchor
    s = torch.tensor([[[0.5, 0.9, 2.0, 1.0]] * 2 + [[0.5, 0.9, 2.0, 0.0]] * 2]).requires_grad_(True)
    e_s = [0.25, 0.81, 4.0, 0.5]  # mean over the four edges
    one_hot = torch.eye(4).unsqueeze(1)  # one mask per anchor
    per_anchor = [bounded_l2_loss(s, t, y, margin=0.3, mask=m, reduction="sum").item() for m in one_hot]
    # 0.25 + 0.3 <= 1 (beaten by the margin); 0.81 + 0.3 > 1; 4 > 1; 0.5 + 0.3 <= 1
    assert per_anchor == pytest.approx([0.0, e_s[1], e_s[2], 0.0])
    per_anchor = [bounded_l2_loss(s, t, y, margin=0.0, mask=m, reduction="sum").item() for m in one_hot]
    assert per_anchor == pytest.approx([0.0, 0.0, e_s[2], 0.0])
    # student exactly the margin better than the teacher: e_s + margin == e_t, so it has beaten it
    assert bounded_l2_loss(s, t, y, margin=0.5, mask=one_hot[3], reduction="sum").item() == 0.0
    # gradient: d mean_k (s_k - y_k)^2 = 2 (s - y) / 4 at the active anchors, nothing at the others
    bounded_l2_loss(s, t, y, margin=0.3, reduction="sum").backward()
    assert s.grad is not None
    expected = torch.zeros_like(s)
    expected[..., 1:3] = 2 * s.detach()[..., 1:3] / 4
    assert torch.allclose(s.grad, expected)


def test_bounded_l2_rejects_negative_margin():
    with pytest.raises(ValueError, match="margin"):
        bounded_l2_loss(torch.zeros(1, 4, 1), torch.zeros(1, 4, 1), torch.zeros(1, 4, 1), margin=-0.1)


def test_bckd_is_bce_to_the_teacher_score_times_the_score_gap():
    """BCKD as its reference code computes it: BCE(p_s, p_t) * |p_t - p_s|^beta, beta 1 by default."""
    t = torch.tensor([[[1.0, 1.0]]], dtype=torch.float64)  # (B=1, C=1, A=2)
    one_hot = torch.eye(2, dtype=torch.float64).unsqueeze(1)
    s = torch.tensor([[[0.5, -3.0]]], dtype=torch.float64)  # anchor 1 far off
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    for m, (si, ti) in zip(one_hot, ((0.5, 1.0), (-3.0, 1.0)), strict=True):
        ps, pt = sig(si), sig(ti)
        bce = -(pt * math.log(ps) + (1 - pt) * math.log(1 - ps))
        got = sigmoid_kd(s, t, weighting="bckd", mask=m, reduction="sum").item()
        assert got == pytest.approx(bce * abs(pt - ps), rel=1e-12)
        assert sigmoid_kd(s, t, weighting="bckd", gamma=2.0, mask=m, reduction="sum").item() == pytest.approx(
            bce * abs(pt - ps) ** 2, rel=1e-12
        )
    # near agreement the weight goes to 0 and so does the term; exactly 0 at agreement
    near = [sigmoid_kd(t + d, t, weighting="bckd").item() for d in (1e-1, 1e-2, 1e-3)]
    assert near[0] > near[1] > near[2] and near[2] < 1e-3
    assert sigmoid_kd(t.clone(), t, weighting="bckd").item() == 0.0


def test_bckd_gradient_goes_through_the_weight():
    temp = 2.0
    s, t = _logit_pair(LOGITS)(_rng(8), torch.float64)
    x = s.clone().requires_grad_(True)
    sigmoid_kd(x, t, temperature=temp, weighting="bckd").backward()
    ps, pt = torch.sigmoid(s / temp), torch.sigmoid(t / temp)
    bce = -(pt * ps.log() + (1 - pt) * (1 - ps).log())
    # d/ds [T^2 * BCE(ps, pt) * |pt - ps|], ps = sigmoid(s / T): both factors depend on s (the weight is live)
    d_bce = (ps - pt) / temp
    d_weight = torch.sign(ps - pt) * ps * (1 - ps) / temp
    expected = temp**2 * (d_bce * (pt - ps).abs() + bce * d_weight) / (LOGITS[0] * LOGITS[2])
    assert x.grad is not None and torch.allclose(x.grad, expected, rtol=1e-9, atol=1e-14)
    # and the function, weight included, is what autograd differentiates
    y = s.clone().requires_grad_(True)
    fn = lambda z: sigmoid_kd(z, t, temperature=temp, weighting="bckd")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (y,))


def test_quality_weighting_trusts_confident_teacher_anchors():
    # anchor 0: the teacher is sure of class 0; anchor 1: it is unsure of every class. Same student gap on class 0.
    t = torch.tensor([[[3.0, -3.0], [-5.0, -4.0]]], dtype=torch.float64)  # (B=1, C=2, A=2)
    s = torch.tensor([[[1.0, -1.0], [-5.0, -4.0]]], dtype=torch.float64)
    one_hot = torch.eye(2, dtype=torch.float64).unsqueeze(1)
    plain = [sigmoid_kd(s, t, mask=m, reduction="sum").item() for m in one_hot]
    quality = [sigmoid_kd(s, t, weighting="quality", mask=m, reduction="sum").item() for m in one_hot]
    assert plain[0] == pytest.approx(plain[1])  # KL is symmetric under flipping both logits: same plain cost
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    assert quality[0] / plain[0] == pytest.approx(max(sig(3.0), sig(-5.0)))
    assert quality[1] / plain[1] == pytest.approx(max(sig(-3.0), sig(-4.0)))
    assert quality[1] < 0.1 * quality[0]


def test_sigmoid_kd_rejects_unknown_weighting():
    with pytest.raises(ValueError, match="weighting"):
        sigmoid_kd(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), weighting="focal")


def test_fresh_global_relation_is_identity_and_fgd_global_term_is_squared_distance():
    torch.manual_seed(0)
    rel = GlobalRelation(4)
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(rel(x), x)
    s, t = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    zeros = torch.zeros(2, 3, 3)
    assert fgd_loss(t.clone(), t, fg_weight=zeros + 1, bg_weight=zeros, relation=rel).item() == 0.0
    only_global = fgd_loss(
        s, t, fg_weight=zeros, bg_weight=zeros, gamma_attention=0.0, lambda_global=1.0, relation=rel
    ).item()
    assert only_global == pytest.approx((t - s).pow(2).sum().item() / 2, rel=1e-5)  # divided by the batch size


def test_fgd_zero_weights_remove_focal_term_only():
    s, t = _map_pair(_rng(9), torch.float32)
    zeros = torch.zeros(MAP[0], *MAP[2:])
    no_focal = fgd_loss(s, t, fg_weight=zeros, bg_weight=zeros, gamma_attention=0.1).item()
    ((fg, bg),) = fgd_weights(GT_BOXES, GT_IDX, MAP[0], GRID, STRIDES)
    attention_only = fgd_loss(s, t, fg_weight=fg, bg_weight=bg, alpha_fg=0.0, beta_bg=0.0, gamma_attention=0.1)
    assert no_focal > 0  # the attention term is not masked (as published)
    assert no_focal == pytest.approx(attention_only.item(), rel=1e-6)


def test_fgd_weights_per_box_area_smallest_box_wins_background_sums_to_one():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 32.0, 32.0],  # image 0: the whole 4 x 4 grid ...
            [0.0, 0.0, 16.0, 16.0],  # ... and a 2 x 2 box inside it
            [16.0, 16.0, 32.0, 32.0],  # image 1: a 2 x 2 box; image 2: no box
        ]
    )
    ((fg, bg),) = fgd_weights(boxes, torch.tensor([0, 0, 1]), 3, [(4, 4)], [8])
    assert fg.shape == bg.shape == (3, 4, 4)
    assert torch.allclose(fg[0, :2, :2], torch.full((2, 2), 1 / 4))  # the small box wins where they overlap
    assert fg[0, 2:].eq(1 / 16).all() and fg[0, :2, 2:].eq(1 / 16).all()
    assert torch.allclose(fg[1, 2:, 2:], torch.full((2, 2), 1 / 4)) and fg[1].sum() == pytest.approx(1.0)
    assert fg[2].sum() == 0
    assert bg[0].sum() == 0  # no background in image 0
    for i in (1, 2):
        assert bg[i].sum().item() == pytest.approx(1.0)
    assert ((fg > 0) & (bg > 0)).sum() == 0  # a position is foreground or background, never both
    assert torch.allclose(bg[1][fg[1] == 0], torch.full((12,), 1 / 12))


def test_fine_grained_masks_grow_as_thresh_decreases():
    boxes = torch.tensor([[10.0, 12.0, 30.0, 40.0], [40.0, 8.0, 60.0, 20.0]])
    grids, strides = [(8, 8), (4, 4)], [8, 16]
    sizes = []
    previous = None
    for thresh in (0.9, 0.7, 0.5, 0.3, 0.1, 0.0):
        masks = fine_grained_masks(boxes, torch.tensor([0, 1]), 2, grids, strides, thresh=thresh)
        if previous is not None:
            assert all((m >= p).all() for m, p in zip(masks, previous))  # nested
        previous = masks
        sizes.append(sum(m.sum().item() for m in masks))
    assert sizes[0] > 0 and sizes[-1] > sizes[0]


def test_fine_grained_masks_empty_without_boxes():
    masks = fine_grained_masks(NO_BOXES, NO_IDX, 2, [(4, 4), (2, 2)], [8, 16])
    assert [m.shape for m in masks] == [(2, 1, 4, 4), (2, 1, 2, 2)]
    assert all(m.sum() == 0 for m in masks)


def test_fine_grained_masks_respect_batch_idx():
    box = torch.tensor([[48.0, 48.0, 64.0, 64.0]])  # bottom-right corner of image 1 only
    (mask,) = fine_grained_masks(box, torch.tensor([1]), 2, [(8, 8)], [8], anchor_scale=2.0)
    assert mask[0].sum() == 0  # image 0 has no box
    assert mask[1].sum() > 0 and mask[1, 0, :4, :4].sum() == 0  # image 1: marked near its box only
    assert mask[1, 0, 6:, 6:].sum() == 4


def test_fine_grained_masks_reject_bad_thresh():
    with pytest.raises(ValueError, match="thresh"):
        fine_grained_masks(GT_BOXES, GT_IDX, 2, GRID, STRIDES, thresh=1.5)


def test_random_keep_mask_drops_about_mask_ratio():
    x = torch.zeros(4, 3, 64, 64)
    for ratio in (0.0, 0.3, 0.65, 1.0):
        keep = random_keep_mask(x, ratio, _rng(10))
        assert keep.shape == (4, 1, 64, 64) and keep.dtype == x.dtype
        assert set(keep.unique().tolist()) <= {0.0, 1.0}
        assert 1.0 - keep.mean().item() == pytest.approx(ratio, abs=0.05)
    assert torch.equal(random_keep_mask(x, 0.5, _rng(11)), random_keep_mask(x, 0.5, _rng(11)))
    assert not torch.equal(random_keep_mask(x, 0.5, _rng(11)), random_keep_mask(x, 0.5, _rng(12)))


def test_fgd_on_an_image_without_boxes_is_finite_and_has_no_foreground_term():
    """The real no-box case: ``fgd_weights`` gives no foreground and every position to the background."""
    ((fg, bg),) = fgd_weights(NO_BOXES, NO_IDX, MAP[0], GRID, STRIDES)
    assert fg.sum() == 0 and torch.allclose(bg.sum(dim=(-2, -1)), torch.ones(MAP[0]))
    torch.manual_seed(0)
    s, t = torch.randn(MAP, requires_grad=True), torch.randn(MAP)
    loss = fgd_loss(s, t, fg_weight=fg, bg_weight=bg, relation=_relation(torch.float32), **FGD_KW)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0 and torch.isfinite(s.grad).all()
    louder_fg = {**FGD_KW, "alpha_fg": 1e3 * FGD_KW.get("alpha_fg", 1e-3)}  # no foreground: its weight cannot matter
    same = fgd_loss(s, t, fg_weight=fg, bg_weight=bg, relation=_relation(torch.float32), **louder_fg)
    assert torch.equal(same, loss)
    no_bg = {**FGD_KW, "beta_bg": 0.0}
    assert fgd_loss(s, t, fg_weight=fg, bg_weight=bg, relation=_relation(torch.float32), **no_bg) < loss


def test_pkd_stays_scale_free_on_maps_with_a_tiny_spread():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 4, 5, 5, generator=g), torch.randn(2, 4, 5, 5, generator=g)
    ref = pearson_kd(s, t).item()
    for scale in (1e-3, 1e-5, 1e3):  # an absolute 1e-6 floor on the variance moved the 1e-5 case far off
        assert pearson_kd(scale * s, t).item() == pytest.approx(ref, rel=1e-4)
        assert pearson_kd(s, scale * t).item() == pytest.approx(ref, rel=1e-4)
    assert pearson_kd(torch.zeros_like(s), t).item() == pytest.approx(0.5, rel=1e-5)  # a dead map: (0 - t^)^2 / 2
