"""A teacher read from a cache: its soft boxes and score field, moved by the batch's augmentation, as dense targets.

Class targets come from the teacher's score field where the cache holds one (a dense head's anchors, painted onto
the student's grid, :func:`~detkd.teachers.soft.paint_field`), else from its soft boxes by the rule of
``kd.targets``. Box targets come from the soft box covering the anchor, or with ``kd.targets.cell_boxes`` from the
field's cells (each anchor's own box) where a cell reaches.

:class:`CachedTeacher` answers the distiller's teacher questions (classes, bins, levels) from the cache and gives,
per batch, :class:`~detkd.types.TeacherOutputs` with heads only: logit and box KD work as with a live teacher,
feature imitation cannot (the teacher's maps are not cached) and is refused when the recipe asks for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from detkd.errors import ConfigError
from detkd.offline.cache import TeacherCache, is_cell
from detkd.teachers.soft import ScoreField, SoftBoxes, paint_field, paint_field_boxes, paint_pairs, soft_to_dense
from detkd.types import FeatureSpec, TeacherOutputs

FEATURE_OFF = "kd.feature.weight=0"
# Spread of the centre prior of cached class targets, in half box sizes (0: the whole box takes the box's score).
# Against the live teacher on the same images (synthetic shapes, augmentation off) the prior cut the mean |p| error
# over all anchors from 0.049 to 0.010 and the logit-KD loss between the two target fields from 0.150 to 0.021,
# and at the teacher's confident anchors (p >= 0.1) from 0.042 to 0.035 (tests/offline/test_cache_targets.py).
CENTRE_SIGMA = 0.4


def scale_groups(scale: Tensor, group: Tensor) -> Tensor:
    """Per box, the median of ``scale`` over its group (boxes of one source image inside one training image share
    the augmentation's scale; a box clipped by a crop underestimates it, the median does not).

    >>> scale_groups(torch.tensor([1.0, 0.4, 1.0, 2.0]), torch.tensor([0, 0, 0, 1])).tolist()
    [1.0, 1.0, 1.0, 2.0]
    """
    out = scale.clone()
    for g in torch.unique(group):
        sel = group == g
        out[sel] = scale[sel].median()
    return out


def _augmentation_scale(xywh: Tensor, orig_wh: Tensor, idx: Tensor, source: Tensor) -> Tensor:
    """Per row, the scale augmentation gave its source image: the median over the image's rows of how much each
    row grew (Ultralytics' scaling is isotropic: of width and height, the larger ratio is the one no crop cut)."""
    scale = torch.maximum(xywh[:, 2] / orig_wh[:, 0].clamp_min(1e-3), xywh[:, 3] / orig_wh[:, 1].clamp_min(1e-3))
    return scale_groups(scale, idx * (int(source.max()) + 1 if len(source) else 1) + source)


def _rows(batch: dict[str, Any], keep: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """(xywh in the training image's pixels, batch index) of some of the batch's soft rows."""
    h, w = (int(v) for v in batch["img"].shape[-2:])
    xywh = batch["soft_bboxes"][keep].to(device).float() * torch.tensor([w, h, w, h], device=device)
    return xywh, batch["soft_batch_idx"][keep].to(device).long().view(-1)


def _flip_sides(sides: Tensor, flips: Tensor) -> Tensor:
    """Per-side rows (n, 4, ...) l, t, r, b with left/right swapped where ``flips[:, 0]`` and top/bottom where
    ``flips[:, 1]`` (a flip mirrors which side is which)."""
    out = sides.clone()
    lr, ud = flips[:, 0], flips[:, 1]
    out[lr] = out[lr][:, [2, 1, 0, 3]]
    out[ud] = out[ud][:, [0, 3, 2, 1]]
    return out


def _row_flips(batch: dict[str, Any], idx: Tensor, device: torch.device) -> Tensor:
    return batch["soft_flips"].to(device)[idx] if len(idx) else torch.zeros(0, 2, dtype=torch.bool, device=device)


def augmented_field(
    batch: dict[str, Any], keep: Tensor, field: dict[str, np.ndarray], device: torch.device
) -> ScoreField:
    """The batch's score cells (rows ``keep`` of its soft rows) in the training image's pixels, their own boxes'
    sides swapped where the image was flipped."""
    xywh, idx = _rows(batch, keep, device)
    cells = torch.as_tensor(field["cells"], device=device).float()
    stride = cells[:, 2:3]
    scale = _augmentation_scale(xywh, stride.expand(-1, 2), idx, torch.as_tensor(field["image"], device=device))
    probs = torch.as_tensor(field["probs"], device=device).float()
    box = None
    if "box" in field:
        box = _flip_sides(torch.as_tensor(field["box"], device=device).float(), _row_flips(batch, idx, device))
    return ScoreField(xywh[:, :2], cells[:, 2] * scale, idx, probs, box)


def augmented_soft_boxes(batch: dict[str, Any], payload: dict[str, np.ndarray], device: torch.device,
                         keep: Tensor | None = None) -> SoftBoxes:  # fmt: skip
    """The batch's soft boxes (rows ``keep`` of its soft rows, default all) in the training image's pixels, with
    their distributions moved the same way."""
    keep = torch.ones(len(batch["soft_bboxes"]), dtype=torch.bool) if keep is None else keep
    xywh, idx = _rows(batch, keep, device)
    boxes = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), dim=1)
    probs = torch.as_tensor(payload["probs"], device=device).float()
    dist = spacing = None
    if "spacing" in payload:
        orig = torch.as_tensor(payload["boxes"], device=device).float()
        source = torch.as_tensor(payload["image"], device=device).long()
        scale = _augmentation_scale(xywh, orig[:, 2:] - orig[:, :2], idx, source)
        spacing = torch.as_tensor(payload["spacing"], device=device).float().view(-1, 1) * scale.view(-1, 1)
        spacing = spacing.expand(-1, 2).contiguous()
    if "dist" in payload:
        dist = _flip_sides(torch.as_tensor(payload["dist"], device=device).float(), _row_flips(batch, idx, device))
    return SoftBoxes(boxes, idx, probs, dist, spacing)


class CachedTeacher(nn.Module):
    """The teacher a cache holds, on the student's grid.

    Args:
        cache: the opened cache (its classes are already the data's: a class map was applied when it was built).
        specs: the student's levels (a cached teacher has no maps of its own; its targets live on this grid).
    """

    def __init__(self, cache: TeacherCache, specs: list[FeatureSpec]) -> None:
        super().__init__()
        self.cache = cache
        self.specs = list(specs)
        self.names = dict(enumerate(cache.names))
        self.num_classes = cache.nc
        self.reg_max = cache.reg_max
        self.end2end = False
        self.use_distributions = cache.reg_max > 1  # set False when box KD does not compare distributions
        self.centre_sigma = CENTRE_SIGMA
        self.rank = "weighted"
        self.level_tau = 0.0
        self.cell_boxes = False
        self._device = torch.device("cpu")
        mask = cache.class_mask
        self.class_mask = None if mask is None else torch.as_tensor(mask)

    def to(self, device: Any) -> CachedTeacher:  # type: ignore[override]
        self._device = torch.device(device)
        return self

    def describe(self) -> str:
        return self.cache.describe()

    def configure(self, kd: Any) -> None:
        """Take the recipe's target settings (``kd.targets``) after checking that it asks nothing a cache lacks."""
        self.check_recipe(kd)
        t = kd.targets
        self.centre_sigma, self.rank, self.level_tau = float(t.centre_sigma), str(t.rank), float(t.level_tau)
        self.cell_boxes = bool(t.cell_boxes)

    def check_recipe(self, kd: Any) -> None:
        if kd.feature.weight > 0:
            raise ConfigError(
                f"feature KD ({kd.feature.method}) needs the teacher's feature maps, which a teacher cache does not "
                f"hold: set {FEATURE_OFF} (logit and box KD work from the cache), or distil from the live teacher"
            )

    def __call__(self, images: Tensor) -> TeacherOutputs:
        raise ConfigError("a cached teacher gives targets for a training batch only (its soft boxes travel with it)")

    def _kinds(self, batch: dict[str, Any]) -> tuple[np.ndarray, Tensor]:
        """The batch's soft-row ids and which of them are score cells (worked out once per batch)."""
        ids = batch["soft_ids"].cpu().numpy()
        if "soft_is_cell" not in batch:
            batch["soft_is_cell"] = torch.as_tensor(is_cell(ids), dtype=torch.bool)
        return ids, batch["soft_is_cell"]

    def soft_boxes(self, batch: dict[str, Any]) -> SoftBoxes:
        """The batch's soft boxes (its score cells left out), moved by its augmentation."""
        ids, cell = self._kinds(batch)
        ids = ids[~cell.numpy()]
        payload = self.cache.payload(ids)
        payload["image"] = self.cache.image_index(ids)
        return augmented_soft_boxes(batch, payload, self._device, ~cell)

    def score_field(self, batch: dict[str, Any]) -> ScoreField | None:
        """The batch's score cells, moved by its augmentation (None when the cache holds no field)."""
        if not self.cache.has_field:
            return None
        ids, cell = self._kinds(batch)
        ids = ids[cell.numpy()]
        field = self.cache.field(ids)
        field["image"] = self.cache.image_index(ids)
        return augmented_field(batch, cell, field, self._device)

    def from_batch(self, batch: dict[str, Any], soft: SoftBoxes | None = None) -> TeacherOutputs:
        soft = soft if soft is not None else self.soft_boxes(batch)
        h, w = (int(v) for v in batch["img"].shape[-2:])
        if not self.use_distributions:
            soft = SoftBoxes(soft.boxes, soft.batch_idx, soft.probs, None, soft.spacing)
        dense = soft_to_dense(
            soft,
            int(batch["img"].shape[0]),
            (h, w),
            tuple(s.stride for s in self.specs),
            reg_max=self.reg_max if self.use_distributions else 1,
            class_mask=None if self.class_mask is None else self.class_mask.to(self._device),
            centre_sigma=self.centre_sigma,
            rank=self.rank,
            level_tau=self.level_tau,
        )
        field = self.score_field(batch)
        if field is not None:
            n, strides = int(batch["img"].shape[0]), tuple(s.stride for s in self.specs)
            pairs = paint_pairs(field, (h, w), strides)
            dense.cls_logits = torch.logit(paint_field(field, n, (h, w), strides, pairs=pairs))
            if self.cell_boxes and field.box is not None:
                if not self.use_distributions and field.box.shape[-1] > 1:  # distances: the distributions' means
                    bins = torch.arange(field.box.shape[-1], device=field.box.device, dtype=field.box.dtype)
                    field.box = (field.box * bins).sum(dim=-1, keepdim=True)
                box, valid = paint_field_boxes(field, n, (h, w), strides, pairs=pairs)
                dense.box_raw = torch.where(valid.unsqueeze(1), box, dense.box_raw)
                dense.box_valid = valid if dense.box_valid is None else valid | dense.box_valid
        return TeacherOutputs(features=[], specs=self.specs, heads={"one2many": dense})
