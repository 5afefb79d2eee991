"""The weighted KD objective: one place applies weights, schedules and balancing, and names every term.

For a batch it computes, for each family that is on,

* ``kd/feat`` = the feature method on the (adapted) student maps and the teacher maps: for most methods the mean
  over levels (per level: ``kd/feat/p3`` ...);
* ``kd/cls``  = the logit method (``T^2`` inside) averaged over the head's branches;
* ``kd/box``  = the box method averaged over the branches;

each method taken from the registry (:mod:`detkd.methods`; ``detkd losses`` lists them), and weights them:
``kd/feat`` by ``w_f * s_f(t)``, ``kd/cls`` by ``w_l * (1 - alpha) * s_l(t)``, ``kd/box`` by
``w_b * s_b(t)``, where ``s(t)`` is each family's schedule at training progress ``t``. The detector's own class loss
is scaled by ``det_cls_scale = 1 - (1 - alpha) * s_l(t)``, so the class objective is
``alpha * L_det_cls + (1 - alpha) * T^2 * L_KD`` while logit KD is fully on, and back to ``L_det_cls`` when it is
off; with ``kd.logit.mode: add`` the class loss stays whole and ``kd/cls`` is weighted ``w_l * s_l(t)``. With
balancing on, each static weight is replaced by the factor that keeps the term at ``ratio * w`` of the detection
loss (see :mod:`detkd.losses.balance`).
"""

from __future__ import annotations

import contextlib
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from detkd.adapters import FeatureAdapters, check_pairing, describe_pairing, level_name, resample_to
from detkd.config import KDConfig
from detkd.errors import PairingError
from detkd.losses.balance import KDBalancer
from detkd.methods import get_method
from detkd.types import FeatureSpec, HeadOutputs, TeacherOutputs

TERMS = ("kd/feat", "kd/cls", "kd/box")
FAMILY_OF = {"kd/feat": "feature", "kd/cls": "logit", "kd/box": "box"}


@dataclass
class KDInputs:
    """Everything one KD step needs, already aligned on the student's grid.

    Attributes:
        student_features: the student's neck maps (before adapters).
        student_heads: the student's dense head outputs by branch.
        teacher: the teacher's outputs for the same images.
        feature_masks: per level, the feature method's position weights: (B, 1, H, W) for ``mse``/``pkd``/
            ``fine_grained``, (B, 2, H, W) foreground/background weights for ``fgd``; None imitates everywhere.
        instances: the batch's ground-truth boxes, (N, 4) xyxy input pixels and their (N,) image indices (for
            methods that work on instances, e.g. ``relation``); None when not given.
        logit_masks: per branch (B, A) anchors for logit KD; a missing branch means all anchors.
        box_masks: per branch (B, A) anchors for box KD (required when box KD is on, except ``positions: all``).
        box_targets: per branch (B, 4, A) ground-truth ltrb distances in grid units (``bounded_l2``).
        det_loss: the detection loss of the step (scalar), for balancing.
    """

    student_features: list[Tensor]
    student_heads: dict[str, HeadOutputs]
    teacher: TeacherOutputs
    feature_masks: list[Tensor] | None = None
    instances: tuple[Tensor, Tensor] | None = None
    logit_masks: dict[str, Tensor] = field(default_factory=dict)
    box_masks: dict[str, Tensor] = field(default_factory=dict)
    box_targets: dict[str, Tensor] = field(default_factory=dict)
    det_loss: Tensor | None = None


@dataclass
class KDTerms:
    """The KD part of the loss: ``total`` (to add to the detection loss), its named terms and measured ratios."""

    total: Tensor
    unweighted: dict[str, Tensor]
    weighted: dict[str, Tensor]
    ratios: dict[str, Tensor] = field(default_factory=dict)


@contextlib.contextmanager
def _naming(term: str) -> Iterator[None]:
    """Prefix the term's name to a loss function's input error (NaN/Inf, shapes): ``kd/feat: cwd: ...``."""
    try:
        yield
    except ValueError as e:
        if type(e) is not ValueError:  # detkd's own errors already say what they are
            raise
        raise ValueError(f"{term}: {e}") from e


def _legacy_keys(module: nn.Module, state: dict[str, Tensor], prefix: str, *args: object) -> None:
    """Checkpoints from before the method registry kept MGD's generators and FGD's relation blocks on the composite
    itself (``generators.0...``); they now live on the feature method (``feature_method.generators.0...``)."""
    for key in [k for k in state if k.startswith((f"{prefix}generators.", f"{prefix}relations."))]:
        state[f"{prefix}feature_method.{key[len(prefix) :]}"] = state.pop(key)


def resolve_box_method(method: str, student_reg_max: int, teacher_reg_max: int) -> str:
    """The box method to run: ``auto`` is ``ld`` when both heads have the same DFL bins, else ``iou``.

    >>> resolve_box_method("auto", 16, 16), resolve_box_method("auto", 1, 16), resolve_box_method("iou", 16, 16)
    ('ld', 'iou', 'iou')
    """
    if method == "auto":
        return "ld" if student_reg_max > 1 and student_reg_max == teacher_reg_max else "iou"
    if method == "ld" and not (student_reg_max > 1 and student_reg_max == teacher_reg_max):
        raise PairingError(
            f"kd.box.method=ld needs DFL heads with the same bins: student reg_max={student_reg_max}, teacher "
            f"reg_max={teacher_reg_max}; use kd.box.method=iou (or auto)"
        )
    return method


class KDComposite(nn.Module):
    """Weighted, scheduled (and optionally balanced) sum of the three KD families for one teacher/student pair.

    Args:
        cfg: the KD recipe.
        student_specs / teacher_specs: paired feature levels (validated here; a mismatch is a ``PairingError``).
        student_classes / teacher_classes: class counts; logit KD needs them equal (map a teacher's classes to the
            student's first: :class:`detkd.teachers.mapped.ClassMappedTeacher`).
        student_reg_max / teacher_reg_max: DFL bins of each head (``auto`` box KD picks LD or IoU from them).
    """

    def __init__(
        self,
        cfg: KDConfig,
        *,
        student_specs: list[FeatureSpec],
        teacher_specs: list[FeatureSpec],
        student_classes: int,
        teacher_classes: int,
        student_reg_max: int,
        teacher_reg_max: int,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.adapters = FeatureAdapters(student_specs, teacher_specs)
        self.level_names = [level_name(s) for s in student_specs]
        self.pairing = describe_pairing(student_specs, teacher_specs, self.adapters.pairs)
        self.use_feature = cfg.feature.weight > 0
        self.use_logit = cfg.logit.weight > 0
        self.use_box = cfg.box.weight > 0
        if self.use_logit or self.use_box:  # dense head targets need the same grid; features are resampled
            check_pairing(student_specs, teacher_specs)
        if self.use_logit and student_classes != teacher_classes:
            raise PairingError(
                f"logit KD needs the same classes: student has {student_classes}, teacher has {teacher_classes}; "
                "give a class map (--class-map map.yaml) or set kd.logit.weight=0 (feature and box KD still work)"
            )
        self.box_method = resolve_box_method(cfg.box.method, student_reg_max, teacher_reg_max)
        self.methods = {
            "kd/feat": get_method("feature", cfg.feature.method),
            "kd/cls": get_method("logit", cfg.logit.method),
            "kd/box": get_method("box", self.box_method),
        }
        feature = self.methods["kd/feat"]
        if not feature.adapted:  # the method compares relations: the raw student maps, no adapter
            self.adapters = FeatureAdapters(student_specs, teacher_specs, learned=False)
        self.feature_method = (
            feature.implementation()(cfg.feature, cfg.feature.options, self.adapters.teacher_specs, student_specs)
            if self.use_feature
            else None
        )
        self._logit_loss = self.methods["kd/cls"].implementation() if self.use_logit else None
        self._box_loss = self.methods["kd/box"].implementation() if self.use_box else None
        self._register_load_state_dict_pre_hook(_legacy_keys)  # type: ignore[no-untyped-call]
        self.balancer = (
            KDBalancer(
                cfg.balance.mode,
                momentum=cfg.balance.momentum,
                interval=cfg.balance.interval,
                max_scale=cfg.balance.max_scale,
            )
            if cfg.balance.mode != "none"
            else None
        )
        self.factors: dict[str, float] = {}
        self.set_progress(0.0, 1)

    # ---- schedule --------------------------------------------------------------------------------------------

    def set_progress(self, progress: float, epochs: int) -> None:
        """Evaluate each family's schedule at ``progress`` epochs (fractional) of ``epochs``."""
        self.factors = {t: getattr(self.cfg, FAMILY_OF[t]).schedule.factor(progress, epochs) for t in TERMS}

    def is_on(self, term: str) -> bool:
        """Whether ``term`` is enabled and its schedule factor is positive now."""
        used = {"kd/feat": self.use_feature, "kd/cls": self.use_logit, "kd/box": self.use_box}[term]
        return used and self.factors[term] > 0

    @property
    def any_on(self) -> bool:
        """False when every term is off now (the teacher need not run)."""
        return any(self.is_on(t) for t in TERMS)

    @property
    def det_cls_scale(self) -> float:
        """Factor for the detector's own class loss: ``1 - (1 - alpha) * s_l(t)`` (1 when logit KD is off)."""
        if not self.is_on("kd/cls") or self.cfg.logit.mode == "add":
            return 1.0
        return 1.0 - (1.0 - self.cfg.logit.alpha) * self.factors["kd/cls"]

    def static_weight(self, term: str) -> float:
        cfg = self.cfg
        return {
            "kd/feat": cfg.feature.weight,
            "kd/cls": cfg.logit.weight * (1.0 if cfg.logit.mode == "add" else 1.0 - cfg.logit.alpha),
            "kd/box": cfg.box.weight,
        }[term]

    # ---- families --------------------------------------------------------------------------------------------

    def _feature(self, inp: KDInputs, unweighted: dict[str, Tensor]) -> Tensor:
        assert self.feature_method is not None
        adapted = self.adapters(inp.student_features)
        teachers = []
        for i, s in enumerate(adapted):
            t = resample_to(inp.teacher.features[self.adapters.pairs[i]], (int(s.shape[-2]), int(s.shape[-1])))
            if self.methods["kd/feat"].adapted and s.shape != t.shape:
                raise PairingError(
                    f"level {self.level_names[i]}: student map {tuple(s.shape)} vs teacher map {tuple(t.shape)}"
                )
            teachers.append(t)
        masks = list(inp.feature_masks) if inp.feature_masks is not None else [None] * len(adapted)
        total, parts = self.feature_method(adapted, teachers, masks, self.level_names, inp)
        unweighted.update({f"kd/feat/{name}": loss for name, loss in parts.items()})
        return typing.cast(Tensor, total)

    @staticmethod
    def _per_branch(
        term: str, losses: Tensor, branches: list[tuple[str, HeadOutputs, HeadOutputs]], unweighted: dict[str, Tensor]
    ) -> Tensor:
        """The mean over head branches; with two (end-to-end heads), each is also named: ``kd/cls/one2one``."""
        if len(branches) > 1:
            unweighted.update({f"{term}/{name}": loss for (name, _, _), loss in zip(branches, losses, strict=True)})
        return losses.mean()

    def _logit(self, inp: KDInputs, branches: list[tuple[str, HeadOutputs, HeadOutputs]]) -> Tensor:
        cfg = self.cfg.logit
        assert self._logit_loss is not None
        return torch.stack(
            [
                self._logit_loss(sh, th, mask=inp.logit_masks.get(name), cfg=cfg, options=cfg.options)
                for name, sh, th in branches
            ]
        )

    def _box(self, inp: KDInputs, branches: list[tuple[str, HeadOutputs, HeadOutputs]]) -> Tensor:
        cfg = self.cfg.box
        assert self._box_loss is not None
        options = cfg.method_options.get(self.box_method)
        losses = []
        for name, sh, th in branches:
            mask = inp.box_masks.get(name)
            if mask is None and cfg.positions != "all":
                raise ValueError(f"box KD needs positions for branch '{name}'")
            if th.box_valid is not None:  # only where the teacher predicted a box
                mask = th.box_valid.float() if mask is None else mask.float() * th.box_valid.float()
            target = inp.box_targets.get(name)
            if self.methods["kd/box"].box_targets and target is None:
                raise ValueError(f"{self.box_method} box KD needs ground-truth targets for branch '{name}'")
            losses.append(self._box_loss(sh, th, mask=mask, target=target, cfg=cfg, options=options))
        return torch.stack(losses)

    # ---- the objective ---------------------------------------------------------------------------------------

    def forward(self, inp: KDInputs) -> KDTerms:
        unweighted: dict[str, Tensor] = {}
        zero = inp.student_features[0].new_zeros(()).float()
        branches = [
            (name, s, inp.teacher.heads[name]) for name, s in inp.student_heads.items() if name in inp.teacher.heads
        ]
        if self.is_on("kd/feat"):
            with _naming("kd/feat"):
                unweighted["kd/feat"] = self._feature(inp, unweighted)
        if self.is_on("kd/cls") and branches:
            with _naming("kd/cls"):
                unweighted["kd/cls"] = self._per_branch("kd/cls", self._logit(inp, branches), branches, unweighted)
        if self.is_on("kd/box") and branches:
            with _naming("kd/box"):
                unweighted["kd/box"] = self._per_branch("kd/box", self._box(inp, branches), branches, unweighted)

        active = {k: unweighted[k] for k in TERMS if k in unweighted}
        ratios: dict[str, Tensor] = {}
        if self.balancer is not None and inp.det_loss is not None and active:
            ratio = self.cfg.balance.ratio
            targets = {k: ratio * getattr(self.cfg, FAMILY_OF[k]).weight for k in active}
            scales = self.balancer.scales(active, inp.det_loss, targets=targets, shared=inp.student_features)
            weights: dict[str, Tensor | float] = dict(scales)
            ratios = {k: self.balancer.ratios[k] * self.factors[k] for k in active if k in self.balancer.ratios}
        else:
            weights = {k: self.static_weight(k) for k in active}
        weighted = {k: self.factors[k] * weights[k] * v for k, v in active.items()}
        total = sum(weighted.values(), zero)
        return KDTerms(total=total, unweighted=unweighted, weighted=weighted, ratios=ratios)
