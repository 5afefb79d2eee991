"""detkd's own KD methods, declared in the registry (:mod:`detkd.methods`): options, catalog entry, positions and
the loss that implements each (in :mod:`detkd.losses.methods`, imported when a run first needs it).

Imported once by the registry; the order here is the order of ``detkd losses`` and of the docs' reference.
"""

from __future__ import annotations

from detkd.config.schema import (
    BCEOptions,
    BoundedL2Options,
    CWDOptions,
    FGDOptions,
    FineGrainedOptions,
    IoUOptions,
    LDOptions,
    MGDOptions,
    MSEOptions,
    PKDOptions,
    RelationOptions,
)
from detkd.methods import Method, register_method

register_method(
    Method(
        "feature",
        "mse",
        "FitNets (Romero et al., ICLR 2015); masks as in Wang et al. (CVPR 2019)",
        "sum_hw m * mean_c (A(s) - t)^2 / sum_hw m",
        "default; ground-truth-box mask (`positions: gt`) keeps the background from dominating",
        options=MSEOptions,
        loss="detkd.losses.methods:MSEImitation",
        masks="positions",
        scale_sensitive=True,
    )
)

register_method(
    Method(
        "feature",
        "fine_grained",
        "Wang et al., Distilling Object Detectors with Fine-grained Feature Imitation, CVPR 2019",
        "mse on cells whose prior boxes overlap a ground-truth box by > thresh * its best IoU",
        "imitation near objects only, with a neighbourhood that adapts to each object's size",
        options=FineGrainedOptions,
        loss="detkd.losses.methods:MSEImitation",
        masks="fine_grained",
        scale_sensitive=True,
    )
)

register_method(
    Method(
        "feature",
        "fgd",
        "Yang et al., Focal and Global Knowledge Distillation for Detectors, CVPR 2022",
        "alpha*fg + beta*bg (teacher spatial/channel attention weighted) + gamma*attention L1 + lambda*GcBlock "
        "relation",
        "separates foreground and background and weights both by the teacher's attention; dense scenes",
        options=FGDOptions,
        loss="detkd.losses.methods:FGD",
        masks="fgd",
        scale_sensitive=True,
    )
)

register_method(
    Method(
        "feature",
        "cwd",
        "Shu et al., Channel-wise Knowledge Distillation for Dense Prediction, ICCV 2021",
        "tau^2 / C * sum_c KL(softmax_hw(t_c / tau) || softmax_hw(A(s)_c / tau))",
        "matches where each channel fires rather than its magnitude; no mask needed",
        options=CWDOptions,
        loss="detkd.losses.methods:ChannelWise",
        masks="none",
    )
)

register_method(
    Method(
        "feature",
        "mgd",
        "Yang et al., Masked Generative Distillation, ECCV 2022",
        "mean (G(A(s) * random_mask) - t)^2, G = conv3x3-ReLU-conv3x3",
        "the student must generate the teacher's map from a masked copy of its own; regularising",
        options=MGDOptions,
        loss="detkd.losses.methods:MGD",
        masks="none",
        scale_sensitive=True,
    )
)

register_method(
    Method(
        "feature",
        "pkd",
        "Cao et al., PKD: General Distillation Framework for Object Detectors via Pearson "
        "Correlation Coefficient, NeurIPS 2022",
        "1/2 * mean (std_c(A(s)) - std_c(t))^2 = 1 - Pearson r per channel",
        "teachers of another family or scale (magnitude-invariant)",
        options=PKDOptions,
        loss="detkd.losses.methods:Pearson",
        masks="positions",
    )
)

register_method(
    Method(
        "feature",
        "relation",
        "relational KD (Park et al., CVPR 2019) on detection instances, as in general-instance distillation (Dai "
        "et al., CVPR 2021), plus the relation between pyramid levels",
        "mean_l smoothL1(D^s_l - D^t_l) over instance pairs (D: RoIAlign-embedding distances / their mean) + "
        "level_weight * mean (R^s - R^t)^2 (R: correlation of the levels' energy maps)",
        "teachers of another family, width or modality: relations need no adapter and ignore scale; combine with "
        "logit and box KD",
        options=RelationOptions,
        loss="detkd.losses.methods:Relation",
        masks="none",
        adapted=False,
    )
)

register_method(
    Method(
        "logit",
        "bce",
        "Hinton et al. 2015, per class as binary distributions for sigmoid heads; BCKD weighting "
        "(Yang et al., ICCV 2023)",
        "T^2 * sum_c KL(Bern(sig(t_c/T)) || Bern(sig(s_c/T))) [* |p_t - p_s|^gamma]",
        "default; YOLO heads score classes with independent sigmoids",
        options=BCEOptions,
        loss="detkd.losses.methods:bce_kd",
    )
)

register_method(
    Method(
        "logit",
        "kl",
        "Hinton et al., Distilling the Knowledge in a Neural Network, 2015",
        "T^2 * KL(softmax_c(t/T) || softmax_c(s/T)) per anchor",
        "for comparison; ignores objectness, so use it with `positions: teacher`",
        loss="detkd.losses.methods:kl_kd",
    )
)

register_method(
    Method(
        "box",
        "ld",
        "Zheng et al., Localization Distillation for Dense Object Detection, CVPR 2022",
        "T^2 / 4 * sum_edges KL(softmax(t_edge / T) || softmax(s_edge / T)) over DFL bins",
        "YOLOv8/11 heads (reg_max > 1) with the same bins as the teacher; `auto` picks it then",
        options=LDOptions,
        loss="detkd.losses.methods:ld_kd",
    )
)

register_method(
    Method(
        "box",
        "iou",
        "GIoU (Rezatofighi et al., CVPR 2019) to the teacher's decoded boxes",
        "(1 - GIoU(s, t)) + l1_weight * mean |s - t| / stride",
        "any head, including YOLO26 (no DFL) and mixed pairs; `auto` picks it when LD cannot apply",
        options=IoUOptions,
        loss="detkd.losses.methods:iou_kd",
    )
)

register_method(
    Method(
        "box",
        "bounded_l2",
        "Chen et al., Learning Efficient Object Detection Models with Knowledge Distillation, NeurIPS 2017",
        "mean_edges (s - y)^2 where it + margin > mean_edges (t - y)^2, else 0 (y: ground truth)",
        "the teacher as an upper bound: keeps a weaker teacher's box errors out of the student",
        options=BoundedL2Options,
        loss="detkd.losses.methods:bounded_l2_kd",
        positions_only="assigner",
        box_targets=True,
    )
)
