"""KD configuration: frozen dataclasses loaded from YAML, with ``--set section.key=value`` overrides.

Every family (``feature``, ``logit``, ``box``) names its ``method`` and has a ``weight``, a ``schedule`` and one
sub-section per method for that method's own options; ``balance`` scales the KD terms against the detection loss.
Unknown keys, wrong types and out-of-range values are errors that name the key and suggest the closest valid one.
``detkd losses`` prints every method with its options and defaults (from :mod:`detkd.catalog`).

>>> cfg = load_kd_config(None, ["kd.logit.weight=2", "feature.method=cwd", "feature.cwd.temperature=4"])
>>> cfg.logit.weight, cfg.feature.method, cfg.feature.cwd.temperature
(2.0, 'cwd', 4.0)
>>> load_kd_config(None, ["kd.logit.wieght=2"])
Traceback (most recent call last):
...
detkd.errors.ConfigError: kd.logit: unknown key 'wieght' (did you mean 'weight'?); ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from detkd._io import read_yaml
from detkd.errors import ConfigError, InputFileError

FEATURE_METHODS = ("mse", "fine_grained", "fgd", "cwd", "mgd", "pkd")
LOGIT_METHODS = ("bce", "kl")
BOX_METHODS = ("auto", "ld", "iou", "bounded_l2")
FEATURE_POSITIONS = ("all", "gt", "teacher", "assigner")
HEAD_POSITIONS = ("all", "teacher", "assigner")
SCHEDULE_KINDS = ("constant", "linear", "cosine")
BALANCE_MODES = ("none", "loss", "grad")
BCE_WEIGHTINGS = ("none", "bckd", "quality")
IOU_KINDS = ("giou", "iou")


def _check_range(section: str, name: str, value: float, lo: float, hi: float | None = None) -> None:
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ConfigError(f"{section}.{name}: {value} must be {bound}")


def _check_positive(section: str, name: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{section}.{name}: {value} must be > 0")


def _check_choice(section: str, name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{name}: '{value}' is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class ScheduleConfig:
    """How a KD term's weight changes over training (progress counted in epochs, per step).

    Attributes:
        kind: ``constant``, ``linear`` or ``cosine`` decay from 1 after the warm-up to ``final`` at the end of
            training (or at ``stop_epoch``).
        warmup_epochs: epochs over which the weight ramps linearly from 0 to 1.
        stop_epoch: epoch (0-based) from which the term is off; negative counts from the end, so ``-10`` with
            Ultralytics' ``close_mosaic=10`` stops KD when mosaic closes. None keeps it on to the end.
        final: factor reached at the end of a ``linear``/``cosine`` decay.
    """

    kind: str = "constant"
    warmup_epochs: float = 0.0
    stop_epoch: int | None = None
    final: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("schedule", "kind", self.kind, SCHEDULE_KINDS)
        _check_range("schedule", "warmup_epochs", self.warmup_epochs, 0.0)
        _check_range("schedule", "final", self.final, 0.0, 1.0)

    def describe(self) -> str:
        parts = [self.kind]
        if self.warmup_epochs:
            parts.append(f"warmup={self.warmup_epochs:g}")
        if self.stop_epoch is not None:
            parts.append(f"stop={self.stop_epoch}")
        if self.kind != "constant":
            parts.append(f"final={self.final:g}")
        return " ".join(parts)

    def stop(self, epochs: int) -> int:
        """The epoch from which the term is off in a run of ``epochs`` (``epochs`` when it never stops).

        >>> ScheduleConfig(stop_epoch=-10).stop(8), ScheduleConfig(stop_epoch=-10).stop(30), ScheduleConfig().stop(5)
        (-2, 20, 5)
        """
        return (
            epochs
            if self.stop_epoch is None
            else (self.stop_epoch if self.stop_epoch >= 0 else epochs + self.stop_epoch)
        )

    def factor(self, progress: float, epochs: int) -> float:
        """The weight factor at ``progress`` epochs into a run of ``epochs`` (fractions count steps).

        >>> s = ScheduleConfig(kind="linear", warmup_epochs=2, stop_epoch=-2)
        >>> [round(s.factor(p, 10), 3) for p in (0, 1, 2, 5, 8, 9)]
        [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
        """
        stop = float(self.stop(epochs))
        if progress >= stop:
            return 0.0
        ramp = min(1.0, progress / self.warmup_epochs) if self.warmup_epochs > 0 else 1.0
        if self.kind == "constant":
            return ramp
        x = min(max((progress - self.warmup_epochs) / max(stop - self.warmup_epochs, 1e-9), 0.0), 1.0)
        decay = (
            1.0 - (1.0 - self.final) * x
            if self.kind == "linear"
            else self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * x))
        )
        return ramp * decay


# ---- feature methods -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MSEOptions:
    """Attributes:
    positions: where to imitate: ``gt`` (cells inside ground-truth boxes), ``teacher`` (weighted by the teacher's
        max class probability), ``assigner`` (the student's assigner foreground) or ``all``.
    """

    positions: str = "gt"

    def __post_init__(self) -> None:
        _check_choice("kd.feature.mse", "positions", self.positions, FEATURE_POSITIONS)


@dataclass(frozen=True)
class FineGrainedOptions:
    """Attributes:
    thresh: psi: a cell is imitated when one of its prior boxes overlaps a ground-truth box with IoU above
        ``thresh`` times that box's best IoU over all priors of all levels.
    anchor_scale: prior box side in strides of its level (YOLO heads are anchor-free; priors exist only here).
    anchor_ratios: aspect ratios (w/h) of the priors at each cell.
    """

    thresh: float = 0.5
    anchor_scale: float = 4.0
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)

    def __post_init__(self) -> None:
        _check_range("kd.feature.fine_grained", "thresh", self.thresh, 0.0, 1.0)
        _check_positive("kd.feature.fine_grained", "anchor_scale", self.anchor_scale)
        if not self.anchor_ratios or any(r <= 0 for r in self.anchor_ratios):
            raise ConfigError(f"kd.feature.fine_grained.anchor_ratios: {list(self.anchor_ratios)} must be > 0")


@dataclass(frozen=True)
class FGDOptions:
    """The defaults keep the paper's ratios at 1/20 of its RetinaNet values (alpha 1e-3, beta 5e-4, gamma 5e-4,
    lambda 5e-6): with those, on YOLO neck maps the term started at 4x the detection loss and collapsed mAP on
    every seed of the demo sweep (benchmarks/README.md).

    Attributes:
    temperature: T of the teacher's spatial and channel attention softmax.
    alpha_fg: weight of the foreground imitation term.
    beta_bg: weight of the background imitation term.
    gamma_attention: weight of the attention-imitation term (L1 between attention maps).
    lambda_global: weight of the global-relation term (GcBlock context of both maps).
    """

    temperature: float = 0.5
    alpha_fg: float = 5e-5
    beta_bg: float = 2.5e-5
    gamma_attention: float = 2.5e-5
    lambda_global: float = 2.5e-7

    def __post_init__(self) -> None:
        _check_positive("kd.feature.fgd", "temperature", self.temperature)
        for name in ("alpha_fg", "beta_bg", "gamma_attention", "lambda_global"):
            _check_range("kd.feature.fgd", name, getattr(self, name), 0.0)


@dataclass(frozen=True)
class CWDOptions:
    """Attributes:
    temperature: tau of the per-channel spatial softmax (the loss is scaled by tau^2).
    """

    temperature: float = 1.0

    def __post_init__(self) -> None:
        _check_positive("kd.feature.cwd", "temperature", self.temperature)


@dataclass(frozen=True)
class MGDOptions:
    """Attributes:
    mask_ratio: lambda: fraction of the student's cells zeroed before the generator reconstructs the teacher map.
    """

    mask_ratio: float = 0.65

    def __post_init__(self) -> None:
        _check_range("kd.feature.mgd", "mask_ratio", self.mask_ratio, 0.0, 0.99)


@dataclass(frozen=True)
class PKDOptions:
    """Attributes:
    positions: where to imitate after standardisation (as for ``mse``); the paper uses ``all``.
    """

    positions: str = "all"

    def __post_init__(self) -> None:
        _check_choice("kd.feature.pkd", "positions", self.positions, FEATURE_POSITIONS)


@dataclass(frozen=True)
class FeatureKDConfig:
    """Feature-pyramid imitation on the neck maps that feed the Detect head (P3-P5), through learned adapters.

    Attributes:
        method: one of ``mse``, ``fine_grained``, ``fgd``, ``cwd``, ``mgd``, ``pkd`` (see ``detkd losses``).
        weight: multiplier of the feature term; 0 disables it.
        schedule: how the weight changes over training.
    """

    method: str = "mse"
    weight: float = 1.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    mse: MSEOptions = field(default_factory=MSEOptions)
    fine_grained: FineGrainedOptions = field(default_factory=FineGrainedOptions)
    fgd: FGDOptions = field(default_factory=FGDOptions)
    cwd: CWDOptions = field(default_factory=CWDOptions)
    mgd: MGDOptions = field(default_factory=MGDOptions)
    pkd: PKDOptions = field(default_factory=PKDOptions)

    def __post_init__(self) -> None:
        _check_choice("kd.feature", "method", self.method, FEATURE_METHODS)
        _check_range("kd.feature", "weight", self.weight, 0.0)

    @property
    def options(self) -> Any:
        """The selected method's options."""
        return getattr(self, self.method)


# ---- logit methods ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BCEOptions:
    """Attributes:
    weighting: per-class weight of the binary KD: ``none``, ``bckd`` (|p_t - p_s|^gamma, detached; BCKD) or
        ``quality`` (the teacher's max class probability at the anchor).
    gamma: exponent of the ``bckd`` weight.
    """

    weighting: str = "none"
    gamma: float = 2.0

    def __post_init__(self) -> None:
        _check_choice("kd.logit.bce", "weighting", self.weighting, BCE_WEIGHTINGS)
        _check_range("kd.logit.bce", "gamma", self.gamma, 0.0)


@dataclass(frozen=True)
class LogitKDConfig:
    """Logit KD on the class head: ``L_cls = a * L_det_cls + (1 - a) * T^2 * L_KD``.

    Attributes:
        method: ``bce`` (sigmoid-aware binary KD per class) or ``kl`` (softmax KL over classes).
        weight: extra multiplier of the KD part; 0 disables logit KD (and ``alpha`` is then ignored).
        alpha: share of the detector's own class loss, in [0, 1].
        temperature: softening temperature T > 0 applied to both student and teacher logits.
        positions: anchors that are distilled: ``all`` (normalised by the teacher's confidence mass), ``teacher``
            (teacher max probability >= ``teacher_conf``) or ``assigner`` (the student's assigner foreground).
        teacher_conf: threshold for ``positions: teacher``.
        schedule: how the KD weight changes; ``alpha`` follows it (the detector's class loss is back at full
            weight whenever the KD factor is 0).
    """

    method: str = "bce"
    weight: float = 1.0
    alpha: float = 0.3
    temperature: float = 1.0
    positions: str = "all"
    teacher_conf: float = 0.3
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    bce: BCEOptions = field(default_factory=BCEOptions)

    def __post_init__(self) -> None:
        _check_choice("kd.logit", "method", self.method, LOGIT_METHODS)
        _check_range("kd.logit", "weight", self.weight, 0.0)
        _check_range("kd.logit", "alpha", self.alpha, 0.0, 1.0)
        _check_positive("kd.logit", "temperature", self.temperature)
        _check_choice("kd.logit", "positions", self.positions, HEAD_POSITIONS)
        _check_range("kd.logit", "teacher_conf", self.teacher_conf, 0.0, 1.0)

    @property
    def options(self) -> Any:
        return self.bce if self.method == "bce" else None


# ---- box methods -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LDOptions:
    """Attributes:
    temperature: T of the softened DFL edge distributions (the loss is scaled by T^2).
    """

    temperature: float = 2.0

    def __post_init__(self) -> None:
        _check_positive("kd.box.ld", "temperature", self.temperature)


@dataclass(frozen=True)
class IoUOptions:
    """Attributes:
    kind: ``giou`` (1 - GIoU, gradient even for disjoint boxes) or ``iou`` (1 - IoU).
    l1_weight: weight of an L1 term on the box corners, in grid units of the anchor's level (0 disables it).
    """

    kind: str = "giou"
    l1_weight: float = 0.5

    def __post_init__(self) -> None:
        _check_choice("kd.box.iou", "kind", self.kind, IOU_KINDS)
        _check_range("kd.box.iou", "l1_weight", self.l1_weight, 0.0)


@dataclass(frozen=True)
class BoundedL2Options:
    """Attributes:
    margin: m: the student is penalised where its squared error to the ground truth plus m exceeds the
        teacher's (distances in grid units of the anchor's level).
    """

    margin: float = 0.0

    def __post_init__(self) -> None:
        _check_range("kd.box.bounded_l2", "margin", self.margin, 0.0)


@dataclass(frozen=True)
class BoxKDConfig:
    """Box-regression distillation.

    Attributes:
        method: ``auto`` (``ld`` when both heads have the same DFL bins, else ``iou``), ``ld``, ``iou`` or
            ``bounded_l2``.
        weight: multiplier of the box term; 0 disables it.
        positions: ``assigner`` (the student's assigner foreground), ``teacher`` (teacher max class probability >=
            ``teacher_conf``) or ``all``; ``bounded_l2`` needs ground truth, so only ``assigner``.
        teacher_conf: threshold for ``positions: teacher``.
        schedule: how the weight changes over training.
    """

    method: str = "auto"
    weight: float = 1.0
    positions: str = "assigner"
    teacher_conf: float = 0.3
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ld: LDOptions = field(default_factory=LDOptions)
    iou: IoUOptions = field(default_factory=IoUOptions)
    bounded_l2: BoundedL2Options = field(default_factory=BoundedL2Options)

    def __post_init__(self) -> None:
        _check_choice("kd.box", "method", self.method, BOX_METHODS)
        _check_range("kd.box", "weight", self.weight, 0.0)
        _check_choice("kd.box", "positions", self.positions, HEAD_POSITIONS)
        _check_range("kd.box", "teacher_conf", self.teacher_conf, 0.0, 1.0)
        if self.method == "bounded_l2" and self.positions != "assigner":
            raise ConfigError(
                f"kd.box.positions: bounded_l2 compares to ground truth, so it needs 'assigner', not '{self.positions}'"
            )

    @property
    def options(self) -> Any:
        return getattr(self, self.method) if self.method != "auto" else None


# ---- balance ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BalanceConfig:
    """Automatic balancing of each KD term against the detection loss.

    With ``mode: loss`` each active term is rescaled so that ``weighted term / detection loss`` tracks
    ``ratio * weight`` (magnitudes averaged with ``momentum``); with ``mode: grad`` the same is done for the norms of
    their gradients on the student's neck maps (the layer every term shares), measured every ``interval`` steps.
    The measured ratio of each term is logged (``kd/ratio/...``).

    Attributes:
        mode: ``none``, ``loss`` or ``grad``.
        ratio: target share of each KD term relative to the detection loss (times the family's weight).
        momentum: exponential-average momentum of the measured magnitudes.
        interval: steps between gradient measurements (``grad`` mode).
        max_scale: cap on the balancing factor, so a vanishing term is not blown up.
    """

    mode: str = "none"
    ratio: float = 0.5
    momentum: float = 0.9
    interval: int = 10
    max_scale: float = 1000.0

    def __post_init__(self) -> None:
        _check_choice("kd.balance", "mode", self.mode, BALANCE_MODES)
        _check_positive("kd.balance", "ratio", self.ratio)
        _check_range("kd.balance", "momentum", self.momentum, 0.0, 0.999)
        if self.interval < 1:
            raise ConfigError(f"kd.balance.interval: {self.interval} must be >= 1")
        _check_positive("kd.balance", "max_scale", self.max_scale)


# ---- unlabeled images ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnlabeledConfig:
    """How a run uses unlabeled images (``unlabeled:`` in the data YAML, or ``--unlabeled DIR``).

    On unlabeled images the student learns from the teacher only: the soft logit and box KD terms everywhere and,
    with ``pseudo_labels``, the detection loss at the teacher's confident detections (never as background).

    Attributes:
        fraction: share of each training batch that is unlabeled images (an epoch is one pass over the labelled
            ones).
        pseudo_labels: feed the teacher's detections on unlabeled images above the threshold to the detection loss
            as hard labels.
        pseudo_conf: class probability a teacher detection needs to become a pseudo-label.
        pseudo_class_conf: one threshold per class (in class order) instead of ``pseudo_conf``; empty: none.
    """

    fraction: float = 0.5
    pseudo_labels: bool = False
    pseudo_conf: float = 0.5
    pseudo_class_conf: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _check_range("kd.unlabeled", "fraction", self.fraction, 0.0, 0.95)
        _check_range("kd.unlabeled", "pseudo_conf", self.pseudo_conf, 0.001, 1.0)
        for v in self.pseudo_class_conf:
            _check_range("kd.unlabeled", "pseudo_class_conf", v, 0.001, 1.0)


# ---- targets from soft boxes -----------------------------------------------------------------------------------


TARGET_RANKS = ("weighted", "score")


@dataclass(frozen=True)
class SoftTargetsConfig:
    """How a teacher cache's soft boxes become dense per-anchor targets (see :mod:`detkd.teachers.soft`): the class
    targets of a cache without a score field (a detections-only teacher, or ``--max-cells 0``), and the box targets
    (unless ``cell_boxes``).

    Attributes:
        centre_sigma: spread of the centre prior, in half box sizes: an anchor inside a box takes the box's class
            probabilities times ``exp(-|d|^2 / (2 sigma^2))`` (``d`` its offset from the box centre); 0 paints the
            whole box with its probabilities.
        rank: which covering box an anchor takes: ``weighted`` (the highest probability times the centre prior) or
            ``score`` (the highest probability; the prior then only scales it).
        level_tau: spread of the level prior, in octaves: an anchor of stride ``s`` takes a box the teacher
            predicted from stride ``t`` (scaled with the image) with weight ``exp(-log2(s / t)^2 / (2 tau^2))``;
            0 gives every level the same weight. Needs a cache that stores strides (DFL teachers).
        cell_boxes: box targets from the score cells' own boxes (each anchor above the cache's threshold: what the
            live teacher predicts there, moved with the augmentation) instead of the covering soft box. Off: on the
            synthetic suite (2 seeds) it lowered offline logit + box KD by 0.009 mAP50-95 and box KD alone by 0.005.
    """

    centre_sigma: float = 0.4
    rank: str = "weighted"
    level_tau: float = 0.0
    cell_boxes: bool = False

    def __post_init__(self) -> None:
        _check_range("kd.targets", "centre_sigma", self.centre_sigma, 0.0, 100.0)
        _check_choice("kd.targets", "rank", self.rank, TARGET_RANKS)
        _check_range("kd.targets", "level_tau", self.level_tau, 0.0, 10.0)


@dataclass(frozen=True)
class KDConfig:
    """The whole KD recipe: one section per knowledge family, the balancing policy, and the use of unlabeled
    images."""

    feature: FeatureKDConfig = field(default_factory=FeatureKDConfig)
    logit: LogitKDConfig = field(default_factory=LogitKDConfig)
    box: BoxKDConfig = field(default_factory=BoxKDConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    unlabeled: UnlabeledConfig = field(default_factory=UnlabeledConfig)
    targets: SoftTargetsConfig = field(default_factory=SoftTargetsConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def describe(self) -> str:
        """One clause per family with the selected method's options, for logs and reports."""
        out = []
        for family in ("feature", "logit", "box"):
            sec = getattr(self, family)
            if not sec.weight:
                out.append(f"{family}: off")
                continue
            opts = sec.options
            extra = {k: v for k, v in dataclasses.asdict(sec).items() if not isinstance(v, dict) and k != "method"}
            if opts is not None:
                extra.update(dataclasses.asdict(opts))
            text = " ".join(f"{k}={v}" for k, v in extra.items())
            out.append(f"{family}: {sec.method} {text} schedule={sec.schedule.describe()}")
        if self.balance.mode != "none":
            out.append(f"balance: {self.balance.mode} ratio={self.balance.ratio}")
        return "; ".join(out)

    def idle_terms(self, epochs: int) -> list[str]:
        """One sentence per weighted family whose schedule leaves it off for the whole run of ``epochs``.

        >>> kd = KDConfig(feature=FeatureKDConfig(schedule=ScheduleConfig(stop_epoch=-10)))
        >>> [t.split(":")[0] for t in kd.idle_terms(10)], kd.idle_terms(11)
        (['kd.feature'], [])
        """
        out = []
        for family in ("feature", "logit", "box"):
            sec = getattr(self, family)
            stop = sec.schedule.stop(epochs)
            if sec.weight and stop <= 0:
                out.append(
                    f"kd.{family}: schedule.stop_epoch={sec.schedule.stop_epoch} with {epochs} epochs stops it at "
                    f"epoch {stop}, so {family} KD is off for the whole run (weight {sec.weight:g} unused); raise "
                    f"the epochs or set kd.{family}.schedule.stop_epoch (null keeps it on to the end)"
                )
        return out


def _plain(value: Any) -> Any:
    """Tuples as lists, so the dumped YAML is plain."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(section: str, name: str, value: Any, kind: Any) -> Any:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union) and type(None) in args:  # Optional[X]
        inner = next(a for a in args if a is not type(None))
        return None if value is None else _coerce(section, name, value, inner)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{section}.{name}: expected a list, got {value!r}")
        return tuple(_coerce(section, name, v, args[0]) for v in value)
    if kind is float:
        if isinstance(value, str):  # PyYAML reads 1e-5 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{section}.{name}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{section}.{name}: {value!r} must be a finite number")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{section}.{name}: expected an integer, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{section}.{name}: expected a string, got {value!r}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{section}.{name}: expected true or false, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {kind!r}")  # a detkd bug, not user input


def _build(cls: type, data: Any, section: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{section}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(
                f"{section}: unknown key '{key}'{_suggest(str(key), names)}; valid keys: {', '.join(names)}"
            )
        kind = hints[key]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, f"{section}.{key}")
        else:
            kwargs[key] = _coerce(section, key, value, kind)
    try:
        return cls(**kwargs)
    except ConfigError as e:  # nested sections (e.g. schedule) name themselves without their parent
        if str(e).startswith("kd."):
            raise
        raise ConfigError(f"{section.rsplit('.', 1)[0]}.{e}") from e


def kd_config_from_dict(data: dict[str, Any]) -> KDConfig:
    """Build a config from a mapping; a top-level ``kd:`` key is optional."""
    if set(data) == {"kd"}:
        data = data["kd"] or {}
    return typing.cast(KDConfig, _build(KDConfig, data, "kd"))


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. kd.logit.weight=2")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if parts and parts[0] == "kd":
        parts = parts[1:]
    if len(parts) < 2:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. kd.logit.weight=2")
    return parts, yaml.safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Merge ``section.key=value`` strings (values parsed as YAML scalars) into a nested mapping (copied)."""
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for item in overrides:
        parts, value = _parse_override(item)
        node = merged
        for p in parts[:-1]:
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: kd.{p} is not a section")
            node[p] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return merged


PRESET_PREFIX = "preset:"


def presets() -> dict[str, Path]:
    """The named recipes shipped with detkd (``--kd preset:NAME``): name -> YAML file."""
    folder = Path(__file__).resolve().parent / "presets"
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def preset_path(spec: str) -> Path:
    """The YAML of ``preset:NAME``; a one-line error naming the presets when there is no such one."""
    name = spec[len(PRESET_PREFIX) :]
    known = presets()
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"--kd {spec}: no such preset{hint}; presets: {', '.join(known)}")
    return known[name]


def load_kd_config(path: str | Path | None = None, overrides: list[str] | None = None) -> KDConfig:
    """Load a KD config from a YAML file, a shipped preset (``preset:NAME``, see :func:`presets`) or the defaults
    (``path`` None), and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = preset_path(str(path)) if str(path).startswith(PRESET_PREFIX) else Path(path)
        loaded = read_yaml(p, "KD config")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise InputFileError(p, "a KD config must be a mapping of sections (feature, logit, box, balance)")
        data = loaded.get("kd", loaded) if set(loaded) == {"kd"} else loaded
        data = data or {}
    try:
        return kd_config_from_dict(apply_overrides(data, overrides or []))
    except ConfigError as e:
        if path is not None:
            raise ConfigError(f"{path}: {e}") from e
        raise


def dump_kd_config(cfg: KDConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump({"kd": cfg.to_dict()}, sort_keys=False), encoding="utf-8")
