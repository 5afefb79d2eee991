"""The training criterion: Ultralytics' detection loss + the KD composite, in Ultralytics' criterion protocol.

Ultralytics calls ``model.loss(batch, preds)`` → ``criterion(preds, batch)`` and expects ``(loss_vector, items)``
where ``loss_vector.sum()`` is backpropagated and ``items`` (a dict of detached scalars) is averaged per epoch and
written to ``results.csv``. :class:`KDCriterion` keeps that protocol, so the student runs forward once per step, the
teacher once under ``no_grad`` (not at all while every KD term is scheduled off), and every term lands in
``results.csv`` beside the detection losses.

The trainer runs the teacher *before* the student's forward (:meth:`KDCriterion.run_teacher` from
``preprocess_batch``): its activations are freed before the student's, which autograd keeps for backward, are
allocated. Run after the student's forward, the same teacher pass measured 7.6% slower per step on 2 CPU cores
(fresh memory for every activation while the student's are alive); see ``benchmarks/RESULTS.md``, Speed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import torch
from torch import Tensor

from detkd.engine import distributed, positions
from detkd.errors import DetkdError
from detkd.losses._checks import all_finite, normalise_over_ranks
from detkd.losses.composite import TERMS, KDComposite, KDInputs, KDTerms
from detkd.offline.unlabeled import (
    add_hard_labels,
    class_thresholds,
    labelled_only,
    pseudo_from_head,
    pseudo_from_soft,
)
from detkd.students import ultralytics_yolo as uy
from detkd.types import Teacher, TeacherOutputs

LOGGER = logging.getLogger(__name__)
KD_ITEM_NAMES = TERMS
NONFINITE_MODES = ("stop", "skip")
MAX_CONSECUTIVE_SKIPS = 50  # in ``skip`` mode, this many non-finite steps in a row means the run has diverged


class NonFiniteLossError(DetkdError):
    """A loss term became NaN or Inf; training stops instead of learning from it."""


def ratio_item_names(composite: KDComposite) -> tuple[str, ...]:
    """``kd/ratio/...`` items logged when balancing is on (measured share of each term vs the detection loss)."""
    if composite.balancer is None:
        return ()
    return tuple(f"kd/ratio/{t.split('/')[1]}" for t in TERMS)


class KDCriterion:
    """Detection loss (Ultralytics' own, with its assigner) plus weighted KD terms.

    Args:
        student: the Ultralytics student model (its hyperparameters ``model.args`` set by the trainer).
        teacher: the frozen teacher.
        composite: the KD objective (holds the adapters and the method modules).
        on_nonfinite: ``stop`` raises :class:`NonFiniteLossError` naming the terms, epoch and batch; ``skip`` warns,
            returns a finite stand-in loss and flags the step so the trainer drops it (:meth:`take_skip`).
    """

    def __init__(
        self,
        student: Any,
        teacher: Teacher,
        composite: KDComposite,
        on_nonfinite: str = "stop",
        unlabeled: frozenset[str] = frozenset(),
    ) -> None:
        if on_nonfinite not in NONFINITE_MODES:
            raise DetkdError(f"on_nonfinite must be one of {NONFINITE_MODES}, got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.skipped = 0  # steps skipped since the last epoch report
        self._consecutive = 0
        self._skip_pending = False
        self.det = uy.AssignedDetectionLoss(student)
        self.head = uy.detect_head(student)
        self.teacher = teacher
        self.composite = composite
        self.last_unweighted: dict[str, Tensor] = {}
        self._ran: tuple[Tensor, TeacherOutputs] | None = None  # (images, outputs) from run_teacher, used once
        self._sums: dict[str, Tensor] = {}  # per named term, its sum over this epoch's finite steps
        self._counts: dict[str, int] = {}
        self.epoch, self.epochs, self.batches, self.step = 0, 1, 1, 0
        self.item_names = (*KD_ITEM_NAMES, *ratio_item_names(composite))
        self.unlabeled = unlabeled  # absolute paths of the training images that have no labels
        self.counts: dict[str, int] = {}  # images, unlabeled images, pseudo-labels, soft boxes this epoch

    def update(self) -> None:
        """Called by Ultralytics once per epoch (end-to-end loss schedule)."""
        self.det.update()

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        """Set the schedule's clock at the start of an epoch (``batches`` steps per epoch)."""
        self.epoch, self.epochs, self.batches, self.step = epoch, max(epochs, 1), max(batches, 1), 0
        self.composite.set_progress(float(epoch), self.epochs)

    def _where(self) -> str:
        return f"epoch {self.epoch + 1}, batch {self.step + 1}"

    def _set_progress(self) -> None:
        self.composite.set_progress(self.epoch + self.step / self.batches, self.epochs)

    def run_teacher(self, batch: dict[str, Any]) -> None:
        """Run the teacher on this step's images now, before the student's forward; the next call with the same
        image tensor uses the outputs (any other call runs the teacher itself). Nothing runs while KD is off.

        A cached teacher gives the targets of the batch's soft boxes instead. Unlabeled images get their
        pseudo-labels here (``kd.unlabeled.pseudo_labels``), added to the batch's ground truth, and the batch is
        told which images have labels (``detkd_labelled``)."""
        self._set_progress()
        cached = getattr(self.teacher, "from_batch", None)
        soft = self.teacher.soft_boxes(batch) if cached is not None else None  # type: ignore[attr-defined]
        out = None
        if self.composite.any_on:
            out = cached(batch, soft) if cached is not None else self.teacher(batch["img"])
        unlabeled = self._unlabeled(batch)
        if soft is not None or unlabeled is not None:  # counted (and logged) only where they can vary
            self._count("images", int(batch["img"].shape[0]))
        if soft is not None:
            self._count("soft_boxes", len(soft))
        if unlabeled is not None:
            batch["detkd_labelled"] = ~unlabeled
            self._count("unlabeled_images", int(unlabeled.sum()))
            cfg = self.composite.cfg.unlabeled
            if cfg.pseudo_labels and bool(unlabeled.any()):
                thr = class_thresholds(cfg.pseudo_conf, cfg.pseudo_class_conf, self.composite_classes, unlabeled.device)
                hard: tuple[Tensor, ...]
                if soft is not None:
                    hard = pseudo_from_soft(soft, unlabeled.to(soft.boxes.device), thr.to(soft.boxes.device))
                else:
                    if out is None:
                        out = self.teacher(batch["img"])
                    hard = pseudo_from_head(out.heads["one2many"], unlabeled, thr)
                self._count("pseudo_labels", add_hard_labels(batch, *hard))
        self._ran = (batch["img"], out) if out is not None else None

    @property
    def composite_classes(self) -> int:
        return int(self.head.nc)

    def _count(self, key: str, value: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + int(value)

    def _unlabeled(self, batch: dict[str, Any]) -> Tensor | None:
        """(B,) True for the batch's unlabeled images (None when the run has none)."""
        if not self.unlabeled:
            return None
        files = batch.get("im_file") or ()
        flags = [os.path.abspath(f) in self.unlabeled for f in files]
        return torch.tensor(flags, dtype=torch.bool, device=batch["img"].device)

    def take_counts(self) -> dict[str, int]:
        """This epoch's image, unlabeled-image, pseudo-label and soft-box counts; resets them."""
        counts, self.counts = self.counts, {}
        return counts

    def _teacher_outputs(self, batch: dict[str, Any]) -> TeacherOutputs:
        ran, self._ran = self._ran, None
        images = batch["img"]
        if ran is not None and ran[0] is images:
            return ran[1]
        cached = getattr(self.teacher, "from_batch", None)
        return cached(batch) if cached is not None else self.teacher(images)

    def __call__(self, preds: Any, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        self._set_progress()
        branches = uy.split_branches(preds)
        with labelled_only(self.det.losses(), batch.get("detkd_labelled")):
            det = self.det(branches, batch)
        cls_scale = self.composite.det_cls_scale
        det_loss = det.loss * det.loss.new_tensor([1.0, cls_scale, 1.0])
        zero = det_loss.new_zeros(())
        weighted: dict[str, Tensor] = {}
        ratios: dict[str, Tensor] = {}
        terms = None
        if self.composite.any_on:
            terms = self._kd(preds, batch, branches, det, det_loss.sum())
            if terms is None:  # the KD inputs were non-finite (skip mode): every KD term counts as non-finite
                weighted = {k: zero + float("nan") for k in KD_ITEM_NAMES}
            else:
                weighted, ratios = terms.weighted, terms.ratios
                self.last_unweighted = {k: v.detach() for k, v in terms.unweighted.items()}
        kd = torch.stack([weighted.get(k, zero).to(det_loss.dtype) for k in KD_ITEM_NAMES])
        total = torch.cat((det_loss, kd))
        finite = bool(torch.isfinite(total).all())
        if finite:
            self._consecutive = 0
            if terms is not None:
                self._accumulate(terms)
        else:
            total = self._nonfinite(total, (*det.items, *KD_ITEM_NAMES))
        # Detection items exactly as Ultralytics reports them (comparable with a run without KD); KD items weighted.
        items = dict(det.items)
        items.update({k: v.detach() for k, v in zip(KD_ITEM_NAMES, kd.detach(), strict=True)})
        for name in self.item_names[len(KD_ITEM_NAMES) :]:
            items[name] = ratios.get(f"kd/{name.rsplit('/', 1)[1]}", zero).detach()
        if not finite:  # a skipped step adds zeros to the epoch means, not NaN
            items = {k: torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0) for k, v in items.items()}
        self.step += 1
        return total * batch["img"].shape[0], items

    def _accumulate(self, terms: KDTerms) -> None:
        """Add a finite step's terms to the epoch sums (kept as tensors: no device sync per step)."""
        named = {**{f"unweighted/{k}": v for k, v in terms.unweighted.items()}, **terms.weighted}
        for k, v in named.items():
            self._sums[k] = self._sums[k] + v.detach().float() if k in self._sums else v.detach().float()
            self._counts[k] = self._counts.get(k, 0) + 1

    def epoch_terms(self) -> tuple[dict[str, float], dict[str, int]]:
        """This epoch's sums and step counts per named term (``kd/feat`` weighted as in ``results.csv``,
        ``unweighted/kd/feat/p3`` and the like before weights and schedules); resets them."""
        sums = {k: float(v) for k, v in self._sums.items()}
        counts, self._sums, self._counts = self._counts, {}, {}
        return sums, counts

    def _nonfinite(self, total: Tensor, names: tuple[str, ...]) -> Tensor:
        bad = [n for n, v in zip(names, total.detach().cpu(), strict=True) if not torch.isfinite(v)]
        if self.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"non-finite loss term(s) {bad} at {self._where()}; stopping instead of training on NaN/Inf "
                "(the last saved checkpoint is intact; on_nonfinite=skip drops such steps instead)"
            )
        self._consecutive += 1
        if self._consecutive > MAX_CONSECUTIVE_SKIPS:
            raise NonFiniteLossError(
                f"non-finite loss term(s) {bad} at {self._where()}, {self._consecutive} steps in a row: the run has "
                "diverged (lower lr0 or the KD weights; the last saved checkpoint is intact)"
            )
        LOGGER.warning("non-finite loss term(s) %s at %s: step skipped", bad, self._where())
        self.skipped += 1
        self._skip_pending = True
        return torch.nan_to_num(total, nan=0.0, posinf=0.0, neginf=0.0)

    def take_skip(self) -> bool:
        """True once after a non-finite step (``skip`` mode): the optimizer step that includes it is dropped."""
        pending, self._skip_pending = self._skip_pending, False
        return pending

    def _kd(self, preds: Any, batch: dict[str, Any], branches: dict[str, Any], det: Any, det_total: Tensor) -> Any:
        comp, cfg = self.composite, self.composite.cfg
        teacher_out = self._teacher_outputs(batch)
        feats = uy.neck_features(preds)
        grids = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
        heads = {name: uy.head_outputs(raw, self.head) for name, raw in branches.items()}
        box_targets = {}
        if comp.is_on("kd/box") and comp.methods["kd/box"].box_targets:
            box_targets = {
                n: positions.ltrb_targets(det.target_boxes[n], h.anchor_points, h.stride_tensor)
                for n, h in heads.items()
            }
        inputs = KDInputs(
            student_features=feats,
            student_heads=heads,
            teacher=teacher_out,
            feature_masks=positions.feature_masks(cfg.feature, batch, teacher_out, grids, det.fg_masks)
            if comp.is_on("kd/feat")
            else None,
            instances=positions.gt_boxes_xyxy(batch) if comp.is_on("kd/feat") else None,
            logit_masks=positions.head_masks(cfg.logit.positions, cfg.logit.teacher_conf, teacher_out, det.fg_masks)
            if comp.is_on("kd/cls")
            else {},
            box_masks=positions.unlabeled_box_masks(
                positions.head_masks(cfg.box.positions, cfg.box.teacher_conf, teacher_out, det.fg_masks),
                cfg.box.positions,
                cfg.box.teacher_conf,
                teacher_out,
                batch.get("detkd_labelled"),
            )
            if comp.is_on("kd/box")
            else {},
            box_targets=box_targets,
            det_loss=det_total,
        )
        try:
            if not distributed.active():
                return comp(inputs)
            # Every rank must run the same losses (their normalisers are reduced over ranks): decide together.
            if distributed.any_rank(not _all_finite(inputs), det_total.device):
                raise ValueError(f"KD inputs contain NaN or Inf on rank {distributed.rank()} or another rank")
            with normalise_over_ranks(distributed.mean_tensor, distributed.world_size()):
                return comp(inputs)
        except ValueError as e:
            if "NaN or Inf" not in str(e):
                raise
            if self.on_nonfinite == "stop":
                raise NonFiniteLossError(f"KD stopped on non-finite values at {self._where()}: {e}") from e
            return None


def _all_finite(obj: Any) -> bool:
    """True when every tensor in ``obj`` (tensors, lists, dicts and dataclasses of them) is finite."""
    if isinstance(obj, Tensor):
        return all_finite(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return all(_all_finite(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return all(_all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_all_finite(v) for v in obj)
    return True
