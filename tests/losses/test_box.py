import pytest
import torch

from detkd.losses.box import box_iou_l1_loss, generalized_iou, ld_loss


def test_ld_zero_when_equal_positive_otherwise():
    t = torch.randn(2, 4 * 16, 10)
    assert ld_loss(t.clone(), t, reg_max=16).item() == pytest.approx(0.0, abs=1e-6)
    assert ld_loss(t + torch.randn_like(t), t, reg_max=16).item() > 0


def test_ld_matches_kl_definition_and_t_squared():
    s, t = torch.randn(1, 4 * 4, 3), torch.randn(1, 4 * 4, 3)
    for temp in (1.0, 3.0):
        ps = torch.log_softmax(s.view(1, 4, 4, 3) / temp, dim=2)
        pt = torch.softmax(t.view(1, 4, 4, 3) / temp, dim=2)
        kl = (pt * (pt.log() - ps)).sum(2).mean(1).mean() * temp**2
        assert ld_loss(s, t, reg_max=4, temperature=temp).item() == pytest.approx(kl.item(), rel=1e-5)


def test_ld_mask_and_gradient():
    s = torch.randn(2, 4 * 8, 5, requires_grad=True)
    t = torch.randn(2, 4 * 8, 5, requires_grad=True)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 1] = True
    loss = ld_loss(s, t, reg_max=8, mask=mask)
    loss.backward()
    assert t.grad is None
    g = s.grad.view(2, 4, 8, 5)
    assert g[0, :, :, 1].abs().sum() > 0 and g[1].abs().sum() == 0 and g[0, :, :, 0].abs().sum() == 0


def test_ld_empty_foreground_is_zero():
    s = torch.randn(1, 4 * 8, 5, requires_grad=True)
    loss = ld_loss(s, torch.randn(1, 4 * 8, 5), reg_max=8, mask=torch.zeros(1, 5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0


def test_ld_rejects_heads_without_bins():
    with pytest.raises(ValueError, match="reg_max"):
        ld_loss(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3), reg_max=1)


def test_giou_known_values():
    a = torch.tensor([[[0.0], [0.0], [2.0], [2.0]]])
    b = torch.tensor([[[1.0], [0.0], [3.0], [2.0]]])  # IoU 1/3, hull 6, union 6 -> GIoU 1/3
    assert generalized_iou(a, b).item() == pytest.approx(1 / 3, rel=1e-4)
    far = torch.tensor([[[10.0], [10.0], [12.0], [12.0]]])
    assert generalized_iou(a, far).item() < 0


def test_iou_l1_zero_when_equal_and_descends():
    t = torch.tensor([[[0.0, 4.0], [0.0, 4.0], [8.0, 12.0], [8.0, 12.0]]])
    assert box_iou_l1_loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-6)
    s = (t + torch.tensor([[[1.0], [-1.0], [2.0], [0.5]]])).requires_grad_(True)
    loss = box_iou_l1_loss(s, t, scale=torch.tensor([8.0, 8.0]))
    loss.backward()
    with torch.no_grad():
        assert box_iou_l1_loss(s - 0.5 * s.grad, t, scale=torch.tensor([8.0, 8.0])) < loss


def test_iou_l1_scale_puts_l1_in_grid_units():
    s = torch.tensor([[[0.0], [0.0], [10.0], [10.0]]])
    t = torch.tensor([[[0.0], [0.0], [10.0], [18.0]]])
    iou_only = box_iou_l1_loss(s, t, l1_weight=0.0).item()
    with_l1 = box_iou_l1_loss(s, t, l1_weight=1.0, scale=torch.tensor([8.0])).item()
    assert with_l1 - iou_only == pytest.approx(8.0 / 4 / 8.0)


def test_gradcheck_float64():
    t = torch.randn(1, 4 * 4, 3, dtype=torch.float64)
    s = torch.randn(1, 4 * 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: ld_loss(x, t, reg_max=4, temperature=2.0), (s,))
    tb = torch.tensor([[[0.0], [0.0], [4.0], [4.0]]], dtype=torch.float64)
    sb = torch.tensor([[[0.5], [0.2], [4.5], [3.0]]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: box_iou_l1_loss(x, tb), (sb,))
