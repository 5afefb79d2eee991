import pytest
import torch

from detkd.losses.feature import masked_mse


def test_zero_when_equal_and_positive_otherwise():
    t = torch.randn(2, 8, 4, 4)
    assert masked_mse(t.clone(), t).item() == 0.0
    assert masked_mse(t + 0.1, t).item() > 0.0


def test_mask_selects_positions():
    s, t = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    t[0, :, 1, 1] = 2.0  # only this position differs
    m = torch.zeros(1, 1, 2, 2)
    m[0, 0, 0, 0] = 1
    assert masked_mse(s, t, mask=m).item() == 0.0
    m[0, 0, 1, 1] = 1
    assert masked_mse(s, t, mask=m).item() == pytest.approx(2.0)  # (4 + 0) / 2 positions


def test_empty_mask_is_zero_and_differentiable():
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    loss = masked_mse(s, torch.randn(2, 4, 3, 3), mask=torch.zeros(2, 1, 3, 3))
    loss.backward()
    assert loss.item() == 0.0
    assert s.grad is not None and s.grad.abs().sum() == 0


def test_gradient_reaches_student_only():
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    t = torch.randn(2, 4, 3, 3, requires_grad=True)
    masked_mse(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_decreases_along_gradient():
    s = torch.randn(2, 4, 3, 3, requires_grad=True)
    t = torch.randn(2, 4, 3, 3)
    loss = masked_mse(s, t)
    loss.backward()
    with torch.no_grad():
        assert masked_mse(s - 0.1 * s.grad, t) < loss


def test_gradcheck_float64():
    s = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 3, 2, 2, dtype=torch.float64)
    m = torch.rand(1, 1, 2, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: masked_mse(x, t, mask=m), (s,))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shapes differ"):
        masked_mse(torch.zeros(1, 2, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="NaN or Inf"):
        masked_mse(torch.full((1, 2, 2, 2), float("nan")), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="reduction"):
        masked_mse(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2), reduction="max")
