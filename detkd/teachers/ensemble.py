"""Ensembles: several teachers of any family, weighted, as one teacher.

Spec: a YAML file with a top-level ``ensemble`` key (paths relative to the file)::

    ensemble:
      fuse: mean            # mean | max: how class probabilities combine
      features_from: 0      # the member whose features feed feature KD
      members:
        - {teacher: yolov8m_teacher.pt, weight: 2.0}
        - {teacher: yolov5s_legacy.pt, weight: 1.0, class_map: coco_to_mine.yaml}
        - {teacher: "torchvision:fcos_resnet50_fpn:fcos.pth", weight: 1.0, class_map: coco_to_mine.yaml}

Every member is first mapped to the student's classes (its ``class_map``, or by name). Per student anchor point
and class, ``mean`` is the weighted mean of the probabilities of the members that have the class, ``max`` the
highest; boxes are the weighted mean of the members' box distances where they have a box. Box targets are then
decoded distances (``reg_max = 1``), so box KD uses ``iou``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detkd._io import read_yaml
from detkd.errors import ConfigError, PairingError
from detkd.teachers.base import FrozenTeacher
from detkd.types import HeadOutputs, TeacherOutputs

FUSE = ("mean", "max")


@dataclass(frozen=True)
class MemberSpec:
    teacher: str
    weight: float = 1.0
    class_map: str | None = None


def is_ensemble(spec: str | Path) -> bool:
    p = Path(str(spec))
    if p.suffix not in (".yaml", ".yml") or not p.is_file():
        return False
    try:
        data = read_yaml(p, "teacher ensemble")
    except Exception:  # not YAML: another loader reports it
        return False
    return isinstance(data, dict) and "ensemble" in data


def _relative(path: Path, value: str) -> str:
    """A member path relative to the ensemble file when it exists there (also inside ``torchvision:b:w``)."""
    if value.startswith("torchvision:"):
        builder, _, weights = value[len("torchvision:") :].partition(":")
        return f"torchvision:{builder}:{_relative(path, weights)}" if weights else value
    candidate = path.parent / value
    return str(candidate) if candidate.exists() else value


def _parse(path: Path) -> tuple[list[MemberSpec], str, int]:
    data = read_yaml(path, "teacher ensemble")["ensemble"]
    where = f"{path}: ensemble"
    if not isinstance(data, dict) or not isinstance(data.get("members"), list) or not data["members"]:
        raise ConfigError(f"{where}: expected 'members:', a list of {{teacher, weight, class_map}}")
    unknown = set(data) - {"members", "fuse", "features_from"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; valid: members, fuse, features_from")
    fuse = data.get("fuse", "mean")
    if fuse not in FUSE:
        raise ConfigError(f"{where}.fuse: '{fuse}' is not one of {', '.join(FUSE)}")
    members = []
    for i, m in enumerate(data["members"]):
        if not isinstance(m, dict) or "teacher" not in m or set(m) - {"teacher", "weight", "class_map"}:
            raise ConfigError(f"{where}.members[{i}]: expected {{teacher, weight, class_map}}, got {m!r}")
        weight = m.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
            raise ConfigError(f"{where}.members[{i}].weight: {weight!r} must be a number > 0")

        cmap = m.get("class_map")
        if not isinstance(m["teacher"], str) or (cmap is not None and not isinstance(cmap, str)):
            raise ConfigError(f"{where}.members[{i}]: 'teacher' and 'class_map' must be paths, got {m!r}")
        members.append(MemberSpec(_relative(path, str(m["teacher"])), float(weight), cmap and _relative(path, cmap)))
    features_from = data.get("features_from", 0)
    if not isinstance(features_from, int) or not 0 <= features_from < len(members):
        raise ConfigError(f"{where}.features_from: {features_from!r} must be a member index (0..{len(members) - 1})")
    return members, fuse, features_from


def member_specs(path: str | Path) -> list[MemberSpec]:
    """The members an ensemble file lists (paths resolved against the file)."""
    return _parse(Path(path))[0]


def _check_acyclic(path: Path, chain: tuple[Path, ...] = ()) -> None:
    """An ensemble may hold ensembles, but never itself (directly or through another)."""
    real = path.resolve()
    if real in chain:
        loop = " -> ".join(str(p) for p in (*chain, real))
        raise ConfigError(f"{path}: the ensemble includes itself ({loop})")
    for m in _parse(path)[0]:
        if is_ensemble(m.teacher):
            _check_acyclic(Path(m.teacher), (*chain, real))


def fuse_heads(heads: list[HeadOutputs], weights: list[float], fuse: str) -> HeadOutputs:
    """Combine members' dense outputs (same grid, same classes) into one.

    >>> a = HeadOutputs(torch.logit(torch.tensor([[[0.8]]])), torch.ones(1, 4, 1), 1, torch.zeros(1, 2),
    ...                 torch.ones(1, 1))
    >>> b = HeadOutputs(torch.logit(torch.tensor([[[0.2]]])), 3 * torch.ones(1, 4, 1), 1, torch.zeros(1, 2),
    ...                 torch.ones(1, 1))
    >>> out = fuse_heads([a, b], [3.0, 1.0], "mean")
    >>> round(float(out.cls_logits.sigmoid()), 4), out.box_raw[0, :, 0].tolist()
    (0.65, [1.5, 1.5, 1.5, 1.5])
    """
    ref = heads[0]
    for h in heads[1:]:
        if h.cls_logits.shape != ref.cls_logits.shape:
            raise PairingError(
                f"ensemble members disagree on the student grid or classes: {tuple(h.cls_logits.shape)} vs "
                f"{tuple(ref.cls_logits.shape)}"
            )
    probs = torch.stack([h.cls_logits.float().sigmoid() for h in heads])  # (K, B, C, A)
    c = probs.shape[2]
    has = torch.stack(
        [h.class_mask.float() if h.class_mask is not None else probs.new_ones(c) for h in heads]
    )  # (K, C)
    w = probs.new_tensor(weights).view(-1, 1)  # (K, 1)
    wc = (w * has).view(len(heads), 1, c, 1)
    if fuse == "mean":
        fused = (wc * probs).sum(0) / wc.sum(0).clamp(min=1e-12)
    else:
        fused = torch.where(wc > 0, probs, torch.zeros_like(probs)).amax(0)
    dist = torch.stack([h.distances().float() for h in heads])  # (K, B, 4, A)
    valid = torch.stack(
        [h.box_valid.float() if h.box_valid is not None else dist.new_ones(dist.shape[1], dist.shape[3]) for h in heads]
    )  # (K, B, A)
    wb = w.view(-1, 1, 1) * valid
    boxes = (wb.unsqueeze(2) * dist).sum(0) / wb.sum(0).unsqueeze(1).clamp(min=1e-12)
    any_mask = has.amax(0) if any(h.class_mask is not None for h in heads) else None
    return HeadOutputs(
        cls_logits=torch.logit(fused.clamp(1e-6, 1 - 1e-6)),
        box_raw=boxes,
        reg_max=1,
        anchor_points=ref.anchor_points,
        stride_tensor=ref.stride_tensor,
        class_mask=any_mask,
        box_valid=valid.amax(0) if any(h.box_valid is not None for h in heads) else None,
    )


class EnsembleTeacher(FrozenTeacher):
    """Several frozen teachers (already mapped to the student's classes) fused into one."""

    def __init__(self, members: list[Any], weights: list[float], fuse: str, features_from: int, source: str) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.weights = list(weights)
        self.fuse = fuse
        self.features_from = features_from
        self.source = source
        first = members[0]
        for i, m in enumerate(members[1:], start=1):
            if [s.stride for s in m.specs] != [s.stride for s in first.specs]:
                raise PairingError(
                    f"{source}: member {i} has feature strides {[s.stride for s in m.specs]}, member 0 has "
                    f"{[s.stride for s in first.specs]}; ensemble members must predict on the same grid"
                )
            if m.names != first.names:
                raise PairingError(f"{source}: member {i} classes differ from member 0 after class mapping")
        self.specs = members[features_from].specs
        self.names = first.names
        self.num_classes = first.num_classes
        self.freeze()

    @torch.no_grad()
    def forward(self, images: Tensor) -> TeacherOutputs:
        outs = [m(images) for m in self.members]
        head = fuse_heads([o.heads["one2many"] for o in outs], self.weights, self.fuse)
        chosen = outs[self.features_from]
        return TeacherOutputs(features=chosen.features, specs=chosen.specs, heads={"one2many": head})

    def describe(self) -> str:
        members: list[Any] = list(self.members)
        parts = [f"{w:g} x {m.describe()}" for w, m in zip(self.weights, members, strict=True)]
        return (
            f"{self.source} (ensemble, fuse={self.fuse}, features from member {self.features_from}: "
            + "; ".join(parts)
            + ")"
        )


def load_ensemble_teacher(
    spec: str | Path,
    *,
    build: Callable[..., Any],
    nc: int | None = None,
    names: dict[int, str] | None = None,
    allow_random: bool = False,
    **_: Any,
) -> EnsembleTeacher:
    """Build every member with ``build`` (the registry's ``build_teacher``; mapped to ``names``, the student's
    classes) and the fused teacher."""
    from detkd.teachers.mapped import paired_classes

    path = Path(spec)
    _check_acyclic(path)
    members, fuse, features_from = _parse(path)
    if names is None:
        raise ValueError("an ensemble teacher needs the student's class names")
    built = []
    for m in members:
        teacher = build(m.teacher, nc=nc, names=names, allow_random=allow_random)
        built.append(paired_classes(teacher, names, m.class_map, required=True))
    return EnsembleTeacher(built, [m.weight for m in members], fuse, features_from, str(spec))
