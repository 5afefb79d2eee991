"""The KD recipe's schema: one frozen dataclass per section (``feature``, ``logit``, ``box`` with one sub-section
per method, ``balance``, ``unlabeled``, ``targets``), each field checked when the section is built."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from detkd.config.checks import check_choice, check_positive, check_range
from detkd.config.schedule import ScheduleConfig
from detkd.errors import ConfigError
from detkd.methods import filled_options, get_method, method_names


def _plain(value: Any) -> Any:
    """Tuples as lists, so the dumped YAML is plain."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


FEATURE_POSITIONS = ("all", "gt", "teacher", "assigner")
HEAD_POSITIONS = ("all", "teacher", "assigner")
BALANCE_MODES = ("none", "loss", "grad")
LOGIT_MODES = ("blend", "add")
BCE_WEIGHTINGS = ("none", "bckd", "quality")
IOU_KINDS = ("giou", "iou")


class MethodFamily:
    """What the three family sections share: a ``method`` chosen from the registry (:mod:`detkd.methods`) and the
    options of every registered method (``method_options``; read as attributes: ``cfg.feature.cwd.temperature``).
    """

    FAMILY: ClassVar[str]
    EXTRA_METHODS: ClassVar[tuple[str, ...]] = ()
    method: str
    method_options: dict[str, Any]

    def _check_method(self) -> None:
        check_choice(f"kd.{self.FAMILY}", "method", self.method, (*self.EXTRA_METHODS, *method_names(self.FAMILY)))
        object.__setattr__(self, "method_options", filled_options(self.FAMILY, self.method_options))
        if self.method in self.EXTRA_METHODS:
            return
        only = get_method(self.FAMILY, self.method).positions_only
        positions = getattr(self, "positions", None)
        if only is not None and positions != only:
            raise ConfigError(f"kd.{self.FAMILY}.positions: {self.method} works only with '{only}', not '{positions}'")

    def __getattr__(self, name: str) -> Any:
        options = self.__dict__.get("method_options")
        if options is not None and name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def options(self) -> Any:
        """The selected method's options (None when it has none)."""
        return self.method_options.get(self.method)

    def section_dict(self) -> dict[str, Any]:
        """Plain data, with each method's options under its name (``kd.yaml``'s layout)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name != "method_options":
                value = getattr(self, f.name)
                out[f.name] = dataclasses.asdict(value) if isinstance(value, ScheduleConfig) else value
        out.update({name: dataclasses.asdict(o) for name, o in self.method_options.items()})
        return typing.cast(dict[str, Any], _plain(out))


# ---- feature methods -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MSEOptions:
    """Attributes:
    positions: where to imitate: ``gt`` (cells inside ground-truth boxes), ``teacher`` (weighted by the teacher's
        max class probability), ``assigner`` (the student's assigner foreground) or ``all``.
    """

    positions: str = "gt"

    def __post_init__(self) -> None:
        check_choice("kd.feature.mse", "positions", self.positions, FEATURE_POSITIONS)


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
        check_range("kd.feature.fine_grained", "thresh", self.thresh, 0.0, 1.0)
        check_positive("kd.feature.fine_grained", "anchor_scale", self.anchor_scale)
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
        check_positive("kd.feature.fgd", "temperature", self.temperature)
        for name in ("alpha_fg", "beta_bg", "gamma_attention", "lambda_global"):
            check_range("kd.feature.fgd", name, getattr(self, name), 0.0)


@dataclass(frozen=True)
class CWDOptions:
    """Attributes:
    temperature: tau of the per-channel spatial softmax (the loss is scaled by tau^2).
    """

    temperature: float = 1.0

    def __post_init__(self) -> None:
        check_positive("kd.feature.cwd", "temperature", self.temperature)


@dataclass(frozen=True)
class MGDOptions:
    """Attributes:
    mask_ratio: lambda: fraction of the student's cells zeroed before the generator reconstructs the teacher map.
    """

    mask_ratio: float = 0.65

    def __post_init__(self) -> None:
        check_range("kd.feature.mgd", "mask_ratio", self.mask_ratio, 0.0, 0.99)


@dataclass(frozen=True)
class PKDOptions:
    """Attributes:
    positions: where to imitate after standardisation (as for ``mse``); the paper uses ``all``.
    """

    positions: str = "all"

    def __post_init__(self) -> None:
        check_choice("kd.feature.pkd", "positions", self.positions, FEATURE_POSITIONS)


RELATION_BOXES = ("gt", "teacher")
RELATION_DISTANCES = ("distance", "cosine")


@dataclass(frozen=True)
class RelationOptions:
    """Attributes:
    boxes: the instances relations are drawn between: ``gt`` (the batch's ground-truth boxes) or ``teacher`` (the
        teacher's detections above ``teacher_conf`` after NMS; also works on unlabeled images).
    distance: the pairwise relation: ``distance`` (Euclidean, normalised by its mean) or ``cosine``.
    level_weight: weight of the relation between pyramid levels (0: instance relations only).
    max_instances: most instances per image that enter the relation.
    pool: RoIAlign output side: each instance is embedded as C * pool^2 values per level.
    teacher_conf: class probability a teacher detection needs (``boxes: teacher``).
    """

    boxes: str = "gt"
    distance: str = "distance"
    level_weight: float = 1.0
    max_instances: int = 64
    pool: int = 1
    teacher_conf: float = 0.3

    def __post_init__(self) -> None:
        check_choice("kd.feature.relation", "boxes", self.boxes, RELATION_BOXES)
        check_choice("kd.feature.relation", "distance", self.distance, RELATION_DISTANCES)
        check_range("kd.feature.relation", "level_weight", self.level_weight, 0.0)
        if self.max_instances < 2:
            raise ConfigError(f"kd.feature.relation.max_instances: {self.max_instances} must be >= 2 (a relation)")
        if not 1 <= self.pool <= 7:
            raise ConfigError(f"kd.feature.relation.pool: {self.pool} must be in [1, 7]")
        check_range("kd.feature.relation", "teacher_conf", self.teacher_conf, 0.0, 1.0)


@dataclass(frozen=True)
class FeatureKDConfig(MethodFamily):
    """Feature-pyramid imitation on the neck maps that feed the Detect head (P3-P5), through learned adapters.

    Attributes:
        method: a registered feature method (the method table lists them).
        weight: multiplier of the feature term; 0 disables it.
        schedule: how the weight changes over training.
    """

    FAMILY: ClassVar[str] = "feature"
    method: str = "mse"
    weight: float = 1.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_method()
        check_range("kd.feature", "weight", self.weight, 0.0)


# ---- logit methods ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BCEOptions:
    """Attributes:
    weighting: per-class weight of the binary KD: ``none``, ``bckd`` (BCKD as its code does it: binary cross-entropy
        to the teacher's score times |p_t - p_s|^gamma, the weight not detached) or ``quality`` (the teacher's max
        class probability at the anchor).
    gamma: exponent of the ``bckd`` weight (beta in the BCKD paper, which uses 1).
    """

    weighting: str = "none"
    gamma: float = 1.0

    def __post_init__(self) -> None:
        check_choice("kd.logit.bce", "weighting", self.weighting, BCE_WEIGHTINGS)
        check_range("kd.logit.bce", "gamma", self.gamma, 0.0)


@dataclass(frozen=True)
class LogitKDConfig(MethodFamily):
    """Logit KD on the class head: ``L_cls = a * L_det_cls + (1 - a) * T^2 * L_KD`` (``mode: blend``), or
    ``L_cls = L_det_cls + w * T^2 * L_KD`` (``mode: add``).

    Attributes:
        method: a registered logit method (the method table lists them).
        weight: extra multiplier of the KD part; 0 disables logit KD (and ``alpha`` is then ignored).
        alpha: share of the detector's own class loss, in [0, 1].
        temperature: softening temperature T > 0 applied to both student and teacher logits.
        positions: anchors that are distilled: ``all`` (normalised by the teacher's confidence mass), ``teacher``
            (teacher max probability >= ``teacher_conf``) or ``assigner`` (the student's assigner foreground).
        teacher_conf: threshold for ``positions: teacher``.
        mode: ``blend`` (Hinton's: the KD term replaces the share ``1 - alpha`` of the detector's class loss) or
            ``add`` (the detector's class loss stays whole and ``weight * KD`` is added; ``alpha`` is ignored): for
            a teacher no better than the student, such as its own EMA (``--teacher self``), whose imitation must
            not take the labels' place.
        schedule: how the KD weight changes; ``alpha`` follows it (the detector's class loss is back at full
            weight whenever the KD factor is 0).
    """

    FAMILY: ClassVar[str] = "logit"
    method: str = "bce"
    weight: float = 1.0
    alpha: float = 0.3
    temperature: float = 1.0
    positions: str = "all"
    teacher_conf: float = 0.3
    mode: str = "blend"
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_method()
        check_choice("kd.logit", "mode", self.mode, LOGIT_MODES)
        check_range("kd.logit", "weight", self.weight, 0.0)
        check_range("kd.logit", "alpha", self.alpha, 0.0, 1.0)
        check_positive("kd.logit", "temperature", self.temperature)
        check_choice("kd.logit", "positions", self.positions, HEAD_POSITIONS)
        check_range("kd.logit", "teacher_conf", self.teacher_conf, 0.0, 1.0)


# ---- box methods -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LDOptions:
    """Attributes:
    temperature: T of the softened DFL edge distributions (the loss is scaled by T^2).
    """

    temperature: float = 2.0

    def __post_init__(self) -> None:
        check_positive("kd.box.ld", "temperature", self.temperature)


@dataclass(frozen=True)
class IoUOptions:
    """Attributes:
    kind: ``giou`` (1 - GIoU, gradient even for disjoint boxes) or ``iou`` (1 - IoU).
    l1_weight: weight of an L1 term on the box corners, in grid units of the anchor's level (0 disables it).
    """

    kind: str = "giou"
    l1_weight: float = 0.5

    def __post_init__(self) -> None:
        check_choice("kd.box.iou", "kind", self.kind, IOU_KINDS)
        check_range("kd.box.iou", "l1_weight", self.l1_weight, 0.0)


@dataclass(frozen=True)
class BoundedL2Options:
    """Attributes:
    margin: m: the student is penalised where its squared error to the ground truth plus m exceeds the
        teacher's (distances in grid units of the anchor's level).
    """

    margin: float = 0.0

    def __post_init__(self) -> None:
        check_range("kd.box.bounded_l2", "margin", self.margin, 0.0)


@dataclass(frozen=True)
class BoxKDConfig(MethodFamily):
    """Box-regression distillation.

    Attributes:
        method: ``auto`` (``ld`` when both heads have the same DFL bins, else ``iou``) or a registered box method
            (the method table lists them).
        weight: multiplier of the box term; 0 disables it.
        positions: ``assigner`` (the student's assigner foreground), ``teacher`` (teacher max class probability >=
            ``teacher_conf``) or ``all``; ``bounded_l2`` needs ground truth, so only ``assigner``.
        teacher_conf: threshold for ``positions: teacher``.
        schedule: how the weight changes over training.
    """

    FAMILY: ClassVar[str] = "box"
    EXTRA_METHODS: ClassVar[tuple[str, ...]] = ("auto",)
    method: str = "auto"
    weight: float = 1.0
    positions: str = "assigner"
    teacher_conf: float = 0.3
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice("kd.box", "positions", self.positions, HEAD_POSITIONS)
        self._check_method()
        check_range("kd.box", "weight", self.weight, 0.0)
        check_range("kd.box", "teacher_conf", self.teacher_conf, 0.0, 1.0)


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
        check_choice("kd.balance", "mode", self.mode, BALANCE_MODES)
        check_positive("kd.balance", "ratio", self.ratio)
        check_range("kd.balance", "momentum", self.momentum, 0.0, 0.999)
        if self.interval < 1:
            raise ConfigError(f"kd.balance.interval: {self.interval} must be >= 1")
        check_positive("kd.balance", "max_scale", self.max_scale)


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
        check_range("kd.unlabeled", "fraction", self.fraction, 0.0, 0.95)
        check_range("kd.unlabeled", "pseudo_conf", self.pseudo_conf, 0.001, 1.0)
        for v in self.pseudo_class_conf:
            check_range("kd.unlabeled", "pseudo_class_conf", v, 0.001, 1.0)


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
        check_range("kd.targets", "centre_sigma", self.centre_sigma, 0.0, 100.0)
        check_choice("kd.targets", "rank", self.rank, TARGET_RANKS)
        check_range("kd.targets", "level_tau", self.level_tau, 0.0, 10.0)


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
        out = {}
        for f in dataclasses.fields(self):
            sec = getattr(self, f.name)
            out[f.name] = sec.section_dict() if isinstance(sec, MethodFamily) else _plain(dataclasses.asdict(sec))
        return out

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
