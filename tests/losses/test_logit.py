import pytest
import torch
import torch.nn.functional as F

from detkd.losses.logit import binary_kl, sigmoid_kd


def _ref_binary_kl(s, t):
    ps, pt = torch.sigmoid(s), torch.sigmoid(t)
    return pt * torch.log(pt / ps) + (1 - pt) * torch.log((1 - pt) / (1 - ps))


def test_binary_kl_matches_definition():
    s, t = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    assert torch.allclose(binary_kl(s, t), _ref_binary_kl(s, t), atol=1e-10)
    assert (binary_kl(s, t) >= -1e-12).all()


def test_zero_when_equal_positive_otherwise():
    t = torch.randn(2, 5, 7)
    assert sigmoid_kd(t.clone(), t, temperature=2.0).item() == pytest.approx(0.0, abs=1e-7)
    assert sigmoid_kd(t + 0.5, t, temperature=2.0).item() > 0


def test_t1_equals_plain_binary_kl_mean():
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    expected = _ref_binary_kl(s.double(), t.double()).sum(1).mean()
    assert sigmoid_kd(s, t, temperature=1.0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_temperature_scaling_by_t_squared():
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    for temp in (0.5, 2.0, 4.0):
        expected = temp**2 * _ref_binary_kl(s.double() / temp, t.double() / temp).sum(1).mean()
        assert sigmoid_kd(s, t, temperature=temp).item() == pytest.approx(expected.item(), rel=1e-5)


def test_high_temperature_flattens_targets():
    # the raw KL (without T^2) shrinks as T grows: softened distributions are closer
    s, t = torch.zeros(1, 1, 1), torch.full((1, 1, 1), 6.0)
    raw = [sigmoid_kd(s, t, temperature=x).item() / x**2 for x in (1.0, 2.0, 8.0)]
    assert raw[0] > raw[1] > raw[2] > 0


def test_gradient_reaches_student_only_and_descends():
    s = torch.randn(2, 3, 4, requires_grad=True)
    t = torch.randn(2, 3, 4, requires_grad=True)
    loss = sigmoid_kd(s, t, temperature=2.0)
    loss.backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    with torch.no_grad():
        assert sigmoid_kd(s - 0.5 * s.grad, t, temperature=2.0) < loss


def test_gradcheck():
    t = torch.randn(1, 2, 3, dtype=torch.float64)
    s = torch.randn(1, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: sigmoid_kd(x, t, temperature=2.0), (s,))


def test_mask_and_normalizer():
    s, t = torch.zeros(1, 1, 2), torch.tensor([[[3.0, 3.0]]])
    full = sigmoid_kd(s, t, reduction="sum").item()
    half = sigmoid_kd(s, t, mask=torch.tensor([[1.0, 0.0]]), reduction="sum").item()
    assert half == pytest.approx(full / 2)
    assert sigmoid_kd(s, t, normalizer=4.0).item() == pytest.approx(full / 4)


def test_empty_mask_zero():
    s = torch.randn(1, 2, 3, requires_grad=True)
    loss = sigmoid_kd(s, torch.randn(1, 2, 3), mask=torch.zeros(1, 3))
    loss.backward()
    assert loss.item() == 0.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="temperature"):
        sigmoid_kd(torch.zeros(1, 1, 1), torch.zeros(1, 1, 1), temperature=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        sigmoid_kd(torch.zeros(1, 1, 1), torch.full((1, 1, 1), float("inf")))
    with pytest.raises(ValueError, match="expected \\(B, C, A\\)"):
        sigmoid_kd(torch.zeros(1, 1), torch.zeros(1, 1))


def test_stable_for_large_logits():
    s, t = torch.full((1, 1, 1), -80.0), torch.full((1, 1, 1), 80.0)
    v = sigmoid_kd(s, t)
    assert torch.isfinite(v) and v.item() > 50
    assert F.logsigmoid(torch.tensor(80.0)).item() == pytest.approx(0.0, abs=1e-6)
