import torch

from detkd.losses.masks import gt_box_masks, split_levels


def test_gt_masks_mark_cells_inside_boxes_per_image():
    boxes = torch.tensor([[0.0, 0.0, 32.0, 16.0], [40.0, 40.0, 64.0, 64.0]])
    masks = gt_box_masks(boxes, torch.tensor([0, 1]), 2, [(8, 8), (4, 4)], [8, 16])
    p3, p4 = masks
    assert p3.shape == (2, 1, 8, 8) and p4.shape == (2, 1, 4, 4)
    assert p3[0, 0, :2, :4].sum() == 8 and p3[0].sum() == 8  # 4x2 cells of image 0
    assert p3[1, 0, 5:, 5:].sum() == 9 and p3[1].sum() == 9


def test_tiny_box_still_marks_its_centre_cell():
    boxes = torch.tensor([[17.0, 17.0, 19.0, 19.0]])  # smaller than a stride-16 cell, no cell centre inside
    (m,) = gt_box_masks(boxes, torch.tensor([0]), 1, [(4, 4)], [16])
    assert m.sum() == 1 and m[0, 0, 1, 1] == 1


def test_no_boxes_gives_empty_masks():
    masks = gt_box_masks(torch.zeros(0, 4), torch.zeros(0), 2, [(4, 4)], [8])
    assert masks[0].sum() == 0 and masks[0].shape == (2, 1, 4, 4)


def test_split_levels_round_trip():
    x = torch.arange(2 * 20, dtype=torch.float32).view(2, 20)
    a, b = split_levels(x, [(4, 4), (2, 2)])
    assert torch.equal(a.flatten(1), x[:, :16]) and torch.equal(b.flatten(1), x[:, 16:])
