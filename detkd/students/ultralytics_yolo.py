"""The one place that touches Ultralytics internals: models, the Detect head's outputs, the detection loss.

Ultralytics' Detect head returns a dict of raw tensors in training (``boxes`` (B, 4*reg_max, A), ``scores``
(B, nc, A), ``feats`` = the P3-P5 inputs of the head), an ``(inference, dict)`` tuple in eval mode, and wraps both in
``one2many``/``one2one`` branches for end-to-end heads (YOLO26). Everything here turns those shapes into detkd's
typed ``HeadOutputs`` / ``FeatureSpec`` so no other module needs to know them. Tested against the installed
Ultralytics by ``tests/students/test_ultralytics_contract.py``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from detkd._offline import offline_env
from detkd.checkpoints import ModuleRecord, UnsafeCheckpointError, load_checkpoint, model_record
from detkd.errors import DetkdError, InputFileError
from detkd.students.model_spec import check_model_dict, load_model_yaml
from detkd.types import FeatureSpec, HeadOutputs

with offline_env():  # Ultralytics reads its offline switches when first imported
    from ultralytics.nn.modules.head import Detect, v10Detect
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.loss import E2ELoss, v8DetectionLoss
    from ultralytics.utils.tal import make_anchors

LOGGER = logging.getLogger(__name__)

BRANCHES = ("one2many", "one2one")
_DETECT_TYPES = (Detect, v10Detect)


def detect_head(model: nn.Module, source: str = "model") -> Detect:
    """The model's Detect head; a clear error for anything that is not a plain detection model."""
    layers = getattr(model, "model", None)
    head = layers[-1] if isinstance(layers, nn.Sequential) and len(layers) else None
    if head is None or type(head) not in _DETECT_TYPES:
        kind = type(head).__name__ if head is not None else type(model).__name__
        raise DetkdError(f"{source}: expected an Ultralytics detection model with a Detect head, got {kind}")
    return cast(Detect, head)


def is_end2end(model: nn.Module) -> bool:
    """True when the head has a one-to-one branch (YOLO26, YOLOv10)."""
    return getattr(detect_head(model), "one2one_cv2", None) is not None


def feature_specs(model: nn.Module) -> list[FeatureSpec]:
    """Channels and strides of the neck maps that feed the Detect head (P3-P5 for standard YOLO)."""
    head = detect_head(model)
    branch: Any = head.cv2 if head.cv2 is not None else head.one2one_cv2
    channels = [int(seq[0].conv.in_channels) for seq in branch]
    strides = [int(s) for s in head.stride.tolist()]
    if any(s <= 0 for s in strides):
        raise DetkdError("model strides are not initialised (build the model before pairing)")
    return [FeatureSpec(c, s) for c, s in zip(channels, strides, strict=True)]


def reg_max(model: nn.Module) -> int:
    return int(detect_head(model).reg_max)


def class_names(model: nn.Module) -> dict[int, str]:
    names = getattr(model, "names", None) or {}
    if isinstance(names, list):
        names = dict(enumerate(names))
    return {int(k): str(v) for k, v in names.items()}


def split_branches(preds: Any) -> dict[str, dict[str, Any]]:
    """Normalise Detect outputs (train dict, eval tuple, end-to-end branches) to ``{branch: raw dict}``."""
    if isinstance(preds, tuple):
        preds = preds[1]
    if not isinstance(preds, dict):
        raise TypeError(f"unexpected Detect output type {type(preds).__name__}")
    if "one2many" in preds:
        return {k: preds[k] for k in BRANCHES if preds.get(k)}
    return {"one2many": preds}


def head_outputs(branch: dict[str, Any], head: Detect) -> HeadOutputs:
    """One branch's raw dict as typed dense outputs with anchors."""
    anchor_points, stride_tensor = make_anchors(branch["feats"], head.stride, 0.5)
    return HeadOutputs(
        cls_logits=branch["scores"],
        box_raw=branch["boxes"],
        reg_max=int(head.reg_max),
        anchor_points=anchor_points,
        stride_tensor=stride_tensor,
    )


def neck_features(preds: Any) -> list[Tensor]:
    """The maps the head consumed (identical for both branches of an end-to-end head)."""
    return list(split_branches(preds)["one2many"]["feats"])


def inference_output(model: nn.Module, x: Tensor) -> Tensor:
    """Decoded predictions in eval mode: (B, 4 + nc, A) xywh + class probabilities, or (B, max_det, 6) for
    end-to-end heads (xyxy, score, class)."""
    out = model(x)
    return out[0] if isinstance(out, tuple) else out


# Root classes of Ultralytics checkpoints that detkd rebuilds, and the tasks it does not take.
_BUILDERS: dict[str, type[nn.Module]] = {"DetectionModel": DetectionModel, "YOLOv10DetectionModel": DetectionModel}
_OTHER_TASKS = {
    "SegmentationModel": "segmentation",
    "PoseModel": "pose",
    "OBBModel": "oriented-box",
    "ClassificationModel": "classification",
    "WorldModel": "open-vocabulary (YOLO-World)",
    "YOLOEModel": "open-vocabulary (YOLOE)",
    "YOLOESegModel": "open-vocabulary segmentation (YOLOE)",
    "RTDETRDetectionModel": "RT-DETR",
}


def build_architecture(
    builder: type[nn.Module], cfg: dict[str, Any], source: str | Path, nc: int | None = None, *, keep_rng: bool = False
) -> Any:
    """``builder(cfg)`` for a checked architecture dict; ``keep_rng``: leave the caller's random streams as they
    were (for a model whose weights are then loaded, so its initialisation must not shift the caller's draws)."""
    try:
        with torch.random.fork_rng(devices=[]) if keep_rng else contextlib.nullcontext():
            return builder(copy.deepcopy(cfg), ch=int(cfg.get("channels", 3)), nc=nc, verbose=False)
    except Exception as e:  # a checked but untrusted architecture: whatever a layer raises, say which file
        raise InputFileError(source, f"model architecture does not build ({type(e).__name__}: {e})") from e


def build_model_from_yaml(cfg: str | Path, nc: int, names: dict[int, str], *, verbose: bool = False) -> DetectionModel:
    """A freshly initialised detection model from an Ultralytics model YAML (a file or a packaged name), checked
    to be plain data first (:mod:`detkd.students.model_spec`)."""
    model = build_architecture(DetectionModel, load_model_yaml(cfg), cfg, nc)
    model.names = dict(names)
    detect_head(model, str(cfg))
    return cast(DetectionModel, model)


def _names_of(rec: ModuleRecord, path: str | Path) -> dict[int, str] | None:
    raw = rec.get("names")
    if raw is None:
        return None
    items = enumerate(raw) if isinstance(raw, (list, tuple)) else raw.items() if isinstance(raw, dict) else None
    if items is None:
        raise InputFileError(path, f"checkpoint class names are a {type(raw).__name__}, not a list or mapping")
    out = {}
    for k, v in items:
        if isinstance(k, bool) or not isinstance(k, int) or not isinstance(v, (str, int)):
            raise InputFileError(path, f"checkpoint class names must map indices to names, got {k!r}: {v!r}")
        out[k] = str(v)
    return out


def _plain_args(*sources: Any) -> dict[str, Any]:
    """Training arguments as Ultralytics' own loader sets ``model.args``: its defaults, overridden by each source
    (a dict or namespace), keeping only known keys with plain values."""
    from ultralytics.utils import DEFAULT_CFG_DICT

    out = dict(DEFAULT_CFG_DICT)
    for raw in sources:
        raw = vars(raw) if hasattr(raw, "__dict__") and not isinstance(raw, dict) else raw
        if isinstance(raw, dict):
            out.update(
                {
                    k: v
                    for k, v in raw.items()
                    if k in DEFAULT_CFG_DICT and isinstance(v, (bool, int, float, str, type(None)))
                }
            )
    return out


def rebuild_model(
    rec: ModuleRecord, path: str | Path, builders: Mapping[str, type[nn.Module]] | None = None, train_args: Any = None
) -> Any:
    """The network a checkpoint record describes, built from its architecture YAML and its tensors only.

    The YAML is checked (:func:`~detkd.students.model_spec.check_model_dict`), the model built fresh by
    Ultralytics' own class, then the file's tensors are loaded into it strictly (same names, same shapes); class
    names and plain training arguments are copied. Nothing of the file is called.
    """
    known: Mapping[str, type[nn.Module]] = builders or _BUILDERS
    name = rec.class_name
    if name not in known:
        task = _OTHER_TASKS.get(name)
        what = f"a {task} model" if task else f"a {name}"
        raise InputFileError(path, f"checkpoint holds {what}, not an Ultralytics detection model detkd can use here")
    cfg = rec.get("yaml")
    if cfg is None:
        raise InputFileError(path, "checkpoint model has no architecture YAML (not an Ultralytics model)")
    try:
        cfg = check_model_dict(cfg, path)
    except InputFileError as e:
        raise UnsafeCheckpointError(f"{path}: refusing to load: the architecture YAML it holds: {e.problem}") from e
    model = build_architecture(known[name], cfg, path, cfg.get("nc"), keep_rng=True)
    try:
        tensors = rec.tensors()
    except DetkdError as e:
        raise InputFileError(path, f"checkpoint model is malformed ({e})") from e
    expected = model.state_dict()
    odd = [k for k, v in tensors.items() if v.layout != torch.strided or v.is_complex() or v.dtype == torch.bool]
    if odd:
        raise InputFileError(path, f"checkpoint tensor {odd[0]} is {tensors[odd[0]].dtype}/{tensors[odd[0]].layout}, "
                                   "not a dense real tensor")  # fmt: skip
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise InputFileError(path, f"checkpoint weights hold NaN or Inf ({', '.join(bad[:3])})")
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", wrong))
            if keys
        )
        raise InputFileError(path, f"checkpoint weights do not match the architecture YAML they came with ({detail})")
    try:
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()}, strict=True)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InputFileError(path, f"checkpoint weights do not load ({' '.join(str(e).split())[:300]})") from e
    names = _names_of(rec, path)
    if names is not None:
        model.names = names
    model.args = _plain_args(rec.get("args"), train_args)
    return model.float()


def load_detection_model(path: str | Path) -> DetectionModel:
    """An Ultralytics detection checkpoint as a float32 model, rebuilt from its data (see :mod:`detkd.checkpoints`)."""
    ckpt = load_checkpoint(path)
    model = rebuild_model(model_record(ckpt, path), path, train_args=ckpt.get("train_args"))
    detect_head(model, str(path))
    model.task = "detect"  # normally set by Ultralytics' YOLO wrapper, which detkd does not use to load
    return cast(DetectionModel, model)


def build_student(spec: str | Path, nc: int, names: dict[int, str]) -> DetectionModel:
    """The student from a model YAML or a ``.pt`` checkpoint (re-headed when its class count differs)."""
    if str(spec).endswith(".pt"):
        model = load_detection_model(spec)
        if detect_head(model).nc != nc:
            LOGGER.info("Student %s has %d classes, data has %d: rebuilding the head", spec, detect_head(model).nc, nc)
            arch: Any = model.yaml
            fresh = build_architecture(DetectionModel, arch, spec, nc)
            fresh.load(model)
            model = fresh
        model.names = dict(names)
    else:
        model = build_model_from_yaml(spec, nc, names)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class DetectionLossResult:
    """Ultralytics' detection loss plus what the assigner decided.

    Attributes:
        loss: (3,) gain-weighted terms (box, cls, dfl or l1) per image, not yet multiplied by the batch size.
        items: detached terms by Ultralytics' names, for logging.
        fg_masks: branch -> (B, A) foreground mask of the task-aligned assigner.
        target_boxes: branch -> (B, A, 4) assigned ground-truth boxes, xyxy input pixels (meaningful on foreground).
    """

    loss: Tensor
    items: dict[str, Tensor]
    fg_masks: dict[str, Tensor]
    target_boxes: dict[str, Tensor]


class AssignedDetectionLoss:
    """Ultralytics' own detection criterion, run so that the assigner's foreground is kept for KD.

    Uses the model's ``init_criterion()`` (``v8DetectionLoss``, or ``E2ELoss`` for end-to-end heads) and its
    ``get_assigned_targets_and_loss``, so losses, gains and assignment stay exactly Ultralytics'.
    """

    def __init__(self, model: DetectionModel) -> None:
        self.inner = model.init_criterion()
        if not isinstance(self.inner, (v8DetectionLoss, E2ELoss)):
            raise DetkdError(f"unsupported detection criterion {type(self.inner).__name__}")

    def __call__(self, branches: dict[str, dict[str, Any]], batch: dict[str, Any]) -> DetectionLossResult:
        if isinstance(self.inner, E2ELoss):
            (fg_m, _, box_m, *_), loss_m, _ = self.inner.one2many.get_assigned_targets_and_loss(
                branches["one2many"], batch
            )
            (fg_o, _, box_o, *_), loss_o, items = self.inner.one2one.get_assigned_targets_and_loss(
                branches["one2one"], batch
            )
            loss = loss_m * self.inner.o2m + loss_o * self.inner.o2o
            return DetectionLossResult(
                loss, items, {"one2many": fg_m, "one2one": fg_o}, {"one2many": box_m, "one2one": box_o}
            )
        (fg, _, boxes, *_), loss, items = self.inner.get_assigned_targets_and_loss(branches["one2many"], batch)
        return DetectionLossResult(loss, items, {"one2many": fg}, {"one2many": boxes})

    def losses(self) -> list[Any]:
        """Ultralytics' per-branch detection losses (``v8DetectionLoss`` instances)."""
        if isinstance(self.inner, E2ELoss):
            return [self.inner.one2many, self.inner.one2one]
        return [self.inner]

    def update(self) -> None:
        """Per-epoch schedule of the end-to-end loss (one-to-many weight decay); no-op otherwise."""
        if hasattr(self.inner, "update"):
            self.inner.update()
