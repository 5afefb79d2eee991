"""Classic (anchor-based) YOLOv5-repository checkpoints, loaded without the YOLOv5 repository and without running
any of the file's code.

Such a ``.pt`` pickles the repository's own classes (``models.yolo.Model``, ``models.yolo.Detect``,
``models.common.Conv`` ...). detkd unpickles it with torch's restricted unpickler, rebuilding each of those classes
as an inert record that only keeps its state (:func:`detkd.checkpoints.load_checkpoint`), reads the
architecture YAML and the weights from it, and rebuilds the network:

* backbone and neck (layers 0-23 of ``yolov5n/s/m/l/x``) with Ultralytics' layer classes, which have the same
  parameters (the YAML is checked against an allow-list of layer names and argument types first: it comes from the
  file, so it is untrusted);
* the anchor-based head as :class:`AnchorHead`: per level a 1x1 convolution to ``na * (5 + nc)`` outputs,
  decoded as ``xy = (2 sigmoid - 0.5 + grid) * stride``, ``wh = (2 sigmoid)^2 * anchor``, score ``obj * cls``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detkd._offline import offline_env
from detkd.checkpoints import load_checkpoint, model_record
from detkd.errors import DetkdError, InputFileError
from detkd.students.model_spec import check_model_dict
from detkd.teachers.base import FrozenTeacher
from detkd.types import FeatureSpec, HeadOutputs, TeacherOutputs

with offline_env():  # Ultralytics reads its offline switches when first imported
    from ultralytics.nn.tasks import parse_model

# Classes the YOLOv5 repository pickles into its checkpoints (v5.0 to v7.0 detection models).
LEGACY_CLASSES = (
    "models.yolo.Model",
    "models.yolo.DetectionModel",
    "models.yolo.Detect",
    "models.common.Conv",
    "models.common.C3",
    "models.common.Bottleneck",
    "models.common.SPPF",
    "models.common.SPP",
    "models.common.Focus",
    "models.common.Concat",
)
_LAYERS = {"Conv", "C3", "SPPF", "SPP", "Focus", "Concat", "nn.Upsample", "Bottleneck"}
_WORDS = {"None", "nearest", "nc", "anchors"}


def is_legacy_yolov5(path: str | Path) -> bool:
    """True when a ``.pt`` file references the YOLOv5 repository's model classes (read without unpickling)."""
    p = Path(path)
    if not (p.suffix == ".pt" and p.is_file()):
        return False
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(p)
    except Exception:  # not a torch zip: the regular loader reports it
        return False
    return any(n.startswith("models.yolo.") for n in names)


def _check_yaml(path: Path, cfg: Any) -> dict[str, Any]:
    """The pickled architecture YAML, checked to hold only known layers and plain arguments."""
    if not isinstance(cfg, dict) or not isinstance(cfg.get("backbone"), list) or not isinstance(cfg.get("head"), list):
        raise InputFileError(path, "legacy YOLOv5 checkpoint has no architecture YAML (model.yaml)")
    if not cfg["head"] or not cfg["backbone"]:
        raise InputFileError(path, "legacy YOLOv5 architecture YAML has an empty backbone or head")
    if "activation" in cfg:
        raise InputFileError(path, "legacy YOLOv5 checkpoint sets a custom activation; only the default SiLU loads")
    for row in cfg["backbone"] + cfg["head"]:
        ok = isinstance(row, list) and len(row) == 4 and isinstance(row[3], list)
        name = row[2] if ok else None
        if name == "Detect":
            continue
        args_ok = ok and all(
            isinstance(a, (int, float, bool)) or a is None or (isinstance(a, str) and a in _WORDS) for a in row[3]
        )
        if name not in _LAYERS or not args_ok:
            raise InputFileError(path, f"legacy YOLOv5 layer {row!r} is not one detkd can rebuild safely")
    if cfg["head"][-1][2] != "Detect":
        raise InputFileError(path, "legacy YOLOv5 model does not end with a Detect head")
    return cfg


class AnchorHead(nn.Module):
    """The classic YOLOv5 Detect head: raw per-anchor outputs and their decoding.

    Args:
        channels: input channels per level.
        nc: number of classes.
        anchors: (levels, anchors per level, 2) anchor sizes in stride units of their level.
        strides: stride of each level.
    """

    def __init__(self, channels: list[int], nc: int, anchors: Tensor, strides: list[int]) -> None:
        super().__init__()
        self.nc, self.na = nc, int(anchors.shape[1])
        self.strides = list(strides)
        self.channels = list(channels)
        self.m = nn.ModuleList(nn.Conv2d(c, self.na * (5 + nc), 1) for c in channels)
        self.register_buffer("anchors", anchors.float().clone())

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """Raw outputs per level, (B, na, H, W, 5 + nc): x, y, w, h, objectness, class logits."""
        out = []
        for f, conv in zip(feats, self.m, strict=True):
            b, _, h, w = f.shape
            out.append(conv(f).view(b, self.na, 5 + self.nc, h, w).permute(0, 1, 3, 4, 2))
        return out

    def decode(self, raw: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: boxes (B, na, H, W, 4) xyxy in input pixels and class scores (B, na, H, W, nc) = obj * cls."""
        boxes, scores = [], []
        anchors: Tensor = self.anchors  # type: ignore[assignment]
        for i, r in enumerate(raw):
            _, _, h, w, _ = r.shape
            s = float(self.strides[i])
            p = r.float().sigmoid()
            gy, gx = torch.meshgrid(
                torch.arange(h, device=r.device, dtype=p.dtype),
                torch.arange(w, device=r.device, dtype=p.dtype),
                indexing="ij",
            )
            grid = torch.stack((gx, gy), dim=-1)  # (H, W, 2)
            xy = (p[..., 0:2] * 2.0 - 0.5 + grid) * s
            wh = (p[..., 2:4] * 2.0).pow(2) * (anchors[i].to(p.dtype) * s).view(1, self.na, 1, 1, 2)
            boxes.append(torch.cat((xy - wh / 2, xy + wh / 2), dim=-1))
            scores.append(p[..., 4:5] * p[..., 5:])
        return boxes, scores


class LegacyYOLOv5(nn.Module):
    """A classic YOLOv5 detector rebuilt from its checkpoint.

    ``forward`` returns, in eval mode, Ultralytics-style predictions (B, 4 + nc, N): xywh boxes in input pixels and
    per-class scores (objectness x class probability), so detkd's evaluator and NMS take it as they take any YOLO.
    :meth:`features_and_raw` gives the neck maps and the raw head outputs for distillation.
    """

    def __init__(self, layers: nn.Sequential, head_from: list[int], head: AnchorHead, names: dict[int, str]) -> None:
        super().__init__()
        self.layers = layers
        self.head_from = list(head_from)
        self.head = head
        self.names = dict(names)
        self.nc = head.nc
        self.specs = [FeatureSpec(int(c), int(s)) for c, s in zip(head.channels, head.strides, strict=True)]

    def neck(self, x: Tensor) -> list[Tensor]:
        """The maps that feed the head (P3-P5), routing layer inputs by each layer's ``f`` as the YAML says."""
        saved: list[Any] = []
        y: Any = x
        for m in self.layers:
            f: Any = m.f
            if f != -1:
                y = saved[f] if isinstance(f, int) else [y if j == -1 else saved[j] for j in f]
            y = m(y)
            saved.append(y)
        return [saved[i] for i in self.head_from]

    def features_and_raw(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        feats = self.neck(x)
        return feats, self.head(feats)

    def forward(self, x: Tensor) -> Tensor:
        _, raw = self.features_and_raw(x)
        boxes, scores = self.head.decode(raw)
        b = x.shape[0]
        xyxy = torch.cat([t.reshape(b, -1, 4) for t in boxes], dim=1)
        prob = torch.cat([t.reshape(b, -1, self.nc) for t in scores], dim=1)
        xywh = torch.cat(((xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]), dim=-1)
        return torch.cat((xywh, prob), dim=-1).permute(0, 2, 1)


def load_legacy_yolov5(path: str | Path) -> LegacyYOLOv5:
    """Rebuild a classic YOLOv5 checkpoint as a float32 :class:`LegacyYOLOv5` (eval mode)."""
    p = Path(path)
    ckpt = load_checkpoint(p, foreign=LEGACY_CLASSES)
    pickled = model_record(ckpt, p)
    cfg = _check_yaml(p, pickled.get("yaml"))
    try:
        state = {k: v.float() for k, v in pickled.tensors().items()}
        seq = pickled.children().get("model")
        detect = list(seq.children().values())[-1] if seq is not None and seq.children() else None
    except DetkdError as e:
        raise InputFileError(p, f"legacy YOLOv5 checkpoint is malformed ({e})") from e
    anchors = (detect.get("_buffers") or {}).get("anchors") if detect is not None else None
    stride, nc = (detect.get("stride"), detect.get("nc")) if detect is not None else (None, None)
    if not isinstance(anchors, Tensor) or not isinstance(stride, Tensor) or not isinstance(nc, int) or nc < 1:
        raise InputFileError(p, "legacy YOLOv5 checkpoint has no Detect head with anchors")
    head_from = cfg["head"][-1][0]
    levels = len(head_from) if isinstance(head_from, list) else -1
    if stride.dim() != 1 or anchors.dim() != 3 or anchors.shape[0] != levels or stride.numel() != levels:
        shapes = f"strides {list(stride.shape)}, anchors {list(anchors.shape)}"
        raise InputFileError(p, f"legacy YOLOv5 Detect head is inconsistent: 'from' {head_from!r}, {shapes}")
    names_raw = pickled.get("names") or {}
    items = enumerate(names_raw) if isinstance(names_raw, (list, tuple)) else getattr(names_raw, "items", None)
    items = items() if callable(items) else items
    if items is None:
        raise InputFileError(p, f"legacy YOLOv5 class names are a {type(names_raw).__name__}, not a list or mapping")
    try:
        names = {int(k): str(v) for k, v in items}
    except (TypeError, ValueError) as e:
        raise InputFileError(p, f"legacy YOLOv5 class names must map indices to names ({e})") from e
    try:
        return _rebuild(p, cfg, state, nc, anchors, stride, [int(i) for i in head_from], names)
    except DetkdError:
        raise
    except Exception as e:  # a checked but untrusted architecture: whatever the builder raises, name the file
        raise InputFileError(p, f"legacy YOLOv5 checkpoint does not rebuild ({type(e).__name__}: {e})") from e


def _rebuild(
    p: Path,
    cfg: dict[str, Any],
    state: dict[str, Tensor],
    nc: int,
    anchors: Tensor,
    stride: Tensor,
    head_from: list[int],
    names: dict[int, str],
) -> LegacyYOLOv5:
    body = check_model_dict({**cfg, "nc": nc, "head": cfg["head"][:-1]}, p)
    with torch.random.fork_rng(devices=[]):  # weights are loaded next: leave the caller's random streams alone
        layers, _ = parse_model(copy.deepcopy(body), ch=int(cfg.get("ch", 3)), verbose=False)
    head_idx = len(layers)
    if any(not 0 <= i < head_idx for i in head_from):
        raise InputFileError(p, f"legacy YOLOv5 Detect reads layers {head_from}; the model has {head_idx}")
    prefix = f"model.{head_idx}."
    body_state = {
        k[len("model.") :]: v for k, v in state.items() if k.startswith("model.") and not k.startswith(prefix)
    }
    try:
        layers.load_state_dict(body_state, strict=True)
    except RuntimeError as e:
        raise InputFileError(p, f"legacy YOLOv5 weights do not match its architecture YAML ({str(e)[:300]})") from e
    for m in layers.modules():
        if isinstance(m, nn.BatchNorm2d):  # the YOLOv5 repository trains with eps 1e-3 (Ultralytics: 1e-5)
            m.eps, m.momentum = 1e-3, 0.03

    strides = [int(s) for s in stride.float().tolist()]
    try:
        channels = [int(state[f"{prefix}m.{i}.weight"].shape[1]) for i in range(len(strides))]
    except KeyError as e:
        raise InputFileError(p, f"legacy YOLOv5 checkpoint has no head weights {e}") from e
    head = AnchorHead(channels, nc, anchors.float(), strides)
    try:
        head.m.load_state_dict({k[len(prefix) + 2 :]: v for k, v in state.items() if k.startswith(prefix + "m.")})
    except RuntimeError as e:
        raise InputFileError(p, f"legacy YOLOv5 head weights do not match its Detect layer ({str(e)[:300]})") from e
    if len(names) != nc:
        names = {i: names.get(i, str(i)) for i in range(nc)}
    model = LegacyYOLOv5(layers, head_from, head, names)
    return model.float().eval()


def dense_targets(head: AnchorHead, raw: list[Tensor], *, eps: float = 1e-6) -> HeadOutputs:
    """The anchor-based predictions as dense targets on an anchor-free student's grid (one point per cell).

    Rule: at each cell, the teacher's anchor with the highest score ``obj * max_c cls`` speaks for the cell. Its
    per-class scores become logits (``logit(obj * cls)``, so the student's sigmoid KD sees exactly the teacher's
    probabilities) and its decoded box becomes left/top/right/bottom distances from the cell centre in grid units
    (``reg_max = 1``: box KD compares decoded boxes, since the teacher has no DFL bins).
    """
    boxes, scores = head.decode(raw)
    cls_levels, box_levels, points, strides = [], [], [], []
    for i, (bx, sc) in enumerate(zip(boxes, scores, strict=True)):
        b, _, h, w, nc = sc.shape
        best = sc.amax(dim=-1).argmax(dim=1, keepdim=True)  # (B, 1, H, W)
        pick_s = sc.gather(1, best.unsqueeze(-1).expand(b, 1, h, w, nc)).squeeze(1)  # (B, H, W, nc)
        pick_b = bx.gather(1, best.unsqueeze(-1).expand(b, 1, h, w, 4)).squeeze(1)  # (B, H, W, 4)
        s = float(head.strides[i])
        gy, gx = torch.meshgrid(
            torch.arange(h, device=sc.device, dtype=sc.dtype) + 0.5,
            torch.arange(w, device=sc.device, dtype=sc.dtype) + 0.5,
            indexing="ij",
        )
        centre = torch.stack((gx, gy), dim=-1)  # (H, W, 2) grid units
        grid_box = pick_b / s
        ltrb = torch.cat((centre - grid_box[..., :2], grid_box[..., 2:] - centre), dim=-1)
        cls_levels.append(torch.logit(pick_s.clamp(eps, 1 - eps)).reshape(b, h * w, nc))
        box_levels.append(ltrb.reshape(b, h * w, 4))
        points.append(centre.reshape(h * w, 2))
        strides.append(torch.full((h * w, 1), s, device=sc.device, dtype=sc.dtype))
    return HeadOutputs(
        cls_logits=torch.cat(cls_levels, dim=1).permute(0, 2, 1),
        box_raw=torch.cat(box_levels, dim=1).permute(0, 2, 1),
        reg_max=1,
        anchor_points=torch.cat(points),
        stride_tensor=torch.cat(strides),
    )


class LegacyYOLOv5Teacher(FrozenTeacher):
    """A frozen classic YOLOv5 teacher returning :class:`TeacherOutputs` (neck P3-P5 + dense targets)."""

    def __init__(self, model: LegacyYOLOv5, source: str = "teacher") -> None:
        super().__init__()
        self.model = model.float()
        self.source = source
        self.specs = model.specs
        self.names = model.names
        self.num_classes = model.nc
        self.freeze()

    @torch.no_grad()
    def forward(self, images: Tensor) -> TeacherOutputs:
        feats, raw = self.model.features_and_raw(images)
        return TeacherOutputs(features=feats, specs=self.specs, heads={"one2many": dense_targets(self.model.head, raw)})

    def describe(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        return (
            f"{self.source} (classic YOLOv5, anchor-based head with {self.model.head.na} anchors per cell, "
            f"{self.num_classes} classes, {params / 1e6:.2f} M params)"
        )


def load_legacy_teacher(spec: str | Path, **_: Any) -> LegacyYOLOv5Teacher:
    return LegacyYOLOv5Teacher(load_legacy_yolov5(spec), source=str(spec))
