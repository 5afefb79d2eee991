"""Distillation losses: pure functions (tensors in, scalar out), their small modules, and the weighted composite."""

from detkd.losses.box import bounded_l2_loss, box_iou_l1_loss, generalized_iou, ld_loss
from detkd.losses.feature import channel_wise_kd, masked_mse, pearson_kd
from detkd.losses.fgd import GlobalRelation, fgd_loss
from detkd.losses.logit import binary_kl, sigmoid_kd, softmax_kd
from detkd.losses.mgd import MGDGenerator, mgd_loss

__all__ = [
    "GlobalRelation",
    "MGDGenerator",
    "binary_kl",
    "bounded_l2_loss",
    "box_iou_l1_loss",
    "channel_wise_kd",
    "fgd_loss",
    "generalized_iou",
    "ld_loss",
    "masked_mse",
    "mgd_loss",
    "pearson_kd",
    "sigmoid_kd",
    "softmax_kd",
]
