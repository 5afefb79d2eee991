"""Distillation losses: pure functions (tensors in, scalar out) and the weighted composite."""

from detkd.losses.box import box_iou_l1_loss, generalized_iou, ld_loss
from detkd.losses.feature import masked_mse
from detkd.losses.logit import binary_kl, sigmoid_kd

__all__ = ["binary_kl", "box_iou_l1_loss", "generalized_iou", "ld_loss", "masked_mse", "sigmoid_kd"]
