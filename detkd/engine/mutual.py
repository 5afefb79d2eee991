"""Online mutual distillation (deep mutual learning, Zhang et al., CVPR 2018): the student and one or more peers
train together from the start, each on the labels and on the others' outputs of the same step.

Per step, every model runs once on the batch (peers before the student, as a teacher would). Model ``k``'s loss is
its own detection loss plus the KD recipe (every family, with its weights, schedules and positions) towards the
others' outputs, detached: with one peer that is exactly DML's pairwise objective; with several, model ``k`` learns
from the others fused into one teacher (class probabilities and box distances averaged per anchor, as an ensemble
teacher fuses its members; feature maps from the first of the others). All models step with one optimizer (the
peers' parameters and their KD adapters are extra parameter groups, clipped like the student's), each keeps its own
EMA, and everything is in ``resume.pt``; under DDP every rank starts from rank 0's peers and their gradients are
averaged like the adapters'.

At the end each peer's EMA is written as a normal Ultralytics checkpoint (``weights/peers/<n>-<model>.pt``; ``detkd
eval``/``export`` take it) and every model, student included, is scored on the val split; the run record names the
best (``mutual`` in ``detkd_run.json``) and ``weights/best_peer.pt`` is a copy of its weights.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from detkd.engine.criterion import KDCriterion
from detkd.losses.composite import KDComposite
from detkd.students import ultralytics_yolo as uy
from detkd.teachers.base import FrozenTeacher
from detkd.teachers.ensemble import fuse_heads
from detkd.types import FeatureSpec, HeadOutputs, TeacherOutputs

LOGGER = logging.getLogger(__name__)
PEER_DIR = "peers"
MUTUAL_TEACHER = "mutual"  # the run record's teacher_spec of a mutual-learning run (its peers are in 'peers')


def detached_outputs(preds: Any, model: nn.Module) -> TeacherOutputs:
    """A model's training outputs of this step as a teacher's (detached: they teach, they do not learn here)."""
    head = uy.detect_head(model)
    heads = {}
    for name, raw in uy.split_branches(preds).items():
        h = uy.head_outputs(raw, head)
        heads[name] = HeadOutputs(h.cls_logits.detach(), h.box_raw.detach(), h.reg_max, h.anchor_points,
                                  h.stride_tensor)  # fmt: skip
    return TeacherOutputs(
        features=[f.detach() for f in uy.neck_features(preds)], specs=uy.feature_specs(model), heads=heads
    )


def combine(outputs: Sequence[TeacherOutputs]) -> TeacherOutputs:
    """The others of a model as one teacher: one as it is; several fused (mean probabilities and distances on the
    dense branch; features from the first)."""
    if len(outputs) == 1:
        return outputs[0]
    fused = fuse_heads([o.heads["one2many"] for o in outputs], [1.0] * len(outputs), "mean")
    return TeacherOutputs(features=outputs[0].features, specs=outputs[0].specs, heads={"one2many": fused})


class PeerView(FrozenTeacher):
    """The teacher one model of the group sees: the others' outputs of the current step, set before it is asked.

    It has no weights of its own; ``specs``, classes and head kind are those of the outputs it will give.
    """

    def __init__(self, others: Sequence[nn.Module], names: dict[int, str]) -> None:
        super().__init__()
        self.specs: list[FeatureSpec] = uy.feature_specs(others[0])
        self.names = dict(names)
        self.num_classes = len(names)
        self.reg_max = uy.reg_max(others[0]) if len(others) == 1 else 1
        self.end2end = uy.is_end2end(others[0]) if len(others) == 1 else False
        self.others = [type(m).__name__ for m in others]
        self._outputs: TeacherOutputs | None = None
        self.freeze()

    def set(self, outputs: TeacherOutputs) -> None:
        self._outputs = outputs

    def forward(self, images: Tensor) -> TeacherOutputs:
        if self._outputs is None:
            raise RuntimeError("PeerView: the group's outputs of this step were not set")
        return self._outputs

    def describe(self) -> str:
        return f"the other {len(self.others)} model(s) of a mutual-learning group"


class Peer(nn.Module):
    """One peer: its trainable model, its KD objective towards the others, its criterion and (once training starts)
    its EMA."""

    def __init__(self, name: str, spec: str, model: nn.Module, view: PeerView, composite: KDComposite) -> None:
        super().__init__()
        self.name, self.spec = name, spec
        self.model, self.composite = model, composite
        self.view = view
        self.crit: KDCriterion | None = None
        self.ema: Any = None


class MutualCriterion(KDCriterion):
    """The student's criterion (its view of the peers is its teacher) that also runs and scores every peer: the
    returned loss is the sum of every model's loss; the logged items are the student's, the peers' losses go to
    ``kd_terms.csv`` (``peer/<name>/loss``)."""

    def __init__(self, student: Any, view: PeerView, composite: KDComposite, peers: Sequence[Peer], **kw: Any) -> None:
        super().__init__(student, view, composite, **kw)
        self.student_model = student
        self.view = view
        self.peers = list(peers)
        for p in self.peers:
            p.model.args = student.args  # the detection loss reads its gains from the model's hyperparameters
            p.crit = KDCriterion(p.model, p.view, p.composite, on_nonfinite=self.on_nonfinite)
        self._peer_preds: list[Any] = []
        self._peer_outs: list[TeacherOutputs] = []

    def update(self) -> None:
        super().update()
        for p in self.peers:
            assert p.crit is not None
            p.crit.update()

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        super().start_epoch(epoch, epochs, batches)
        for p in self.peers:
            assert p.crit is not None
            p.crit.start_epoch(epoch, epochs, batches)

    def run_teacher(self, batch: dict[str, Any]) -> None:
        """The peers' forward passes of this step (with gradients: they learn from it too); the student's teacher
        is the peers' outputs."""
        images = batch["img"]
        self._peer_preds, self._peer_outs = [], []
        for p in self.peers:
            p.model.train()
            preds = p.model(images)
            self._peer_preds.append(preds)
            self._peer_outs.append(detached_outputs(preds, p.model))
        self.view.set(combine(self._peer_outs))
        super().run_teacher(batch)

    def __call__(self, preds: Any, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        total, items = super().__call__(preds, batch)
        if not self._peer_preds:  # called outside a training step (no peer forward ran): the student's loss alone
            return total, items
        student_out = detached_outputs(preds, self.student_model)
        outs = [student_out, *self._peer_outs]
        for k, p in enumerate(self.peers, start=1):
            assert p.crit is not None
            p.view.set(combine([o for j, o in enumerate(outs) if j != k]))
            loss, _ = p.crit(self._peer_preds[k - 1], batch)
            total = total + loss
            key = f"peer/{p.name}/loss"
            value = loss.detach().sum().float() / batch["img"].shape[0]
            self._sums[key] = self._sums[key] + value if key in self._sums else value
            self._counts[key] = self._counts.get(key, 0) + 1
        self._peer_preds, self._peer_outs = [], []
        return total, items

    def take_skip(self) -> bool:
        skips = [super().take_skip()] + [p.crit.take_skip() for p in self.peers if p.crit is not None]
        return any(skips)


def peer_checkpoint(peer: Peer, train_args: dict[str, Any]) -> dict[str, Any]:
    """A peer's EMA in Ultralytics' checkpoint layout, loadable by ``detkd eval``/``export`` and as a student."""
    import ultralytics

    return {
        "epoch": -1,
        "model": None,
        "ema": copy.deepcopy(peer.ema.ema).half(),
        "updates": int(peer.ema.updates),
        "train_args": train_args,
        "version": ultralytics.__version__,
    }


def save_and_score_peers(
    trainer: Any, peers: Sequence[Peer], student_weights: Path, data: Any, imgsz: int, device: Any
) -> dict[str, Any]:
    """Write every peer's checkpoint, score every model of the group on the val split, copy the best one's weights
    to ``weights/best_peer.pt``; returns the record for ``detkd_run.json``."""
    from detkd.eval.coco import evaluate
    from detkd.eval.predict import TorchPredictor
    from detkd.utils.device import torch_device_name

    wdir = Path(trainer.wdir)
    (wdir / PEER_DIR).mkdir(parents=True, exist_ok=True)
    dev = torch_device_name(device)
    rows: list[dict[str, Any]] = []

    def score(model: nn.Module) -> dict[str, float]:
        ev = evaluate(TorchPredictor(copy.deepcopy(model).float().eval(), dev), data, "val", imgsz=imgsz)
        return {"mAP50-95": float(ev.map50_95), "mAP50": float(ev.map50)}

    student = uy.load_detection_model(student_weights)
    rows.append(
        {"name": "student", "model": str(trainer.args.model), "weights": str(student_weights), **score(student)}
    )
    for p in peers:
        path = wdir / PEER_DIR / f"{p.name}.pt"
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(peer_checkpoint(p, vars(trainer.args)), tmp)
        tmp.replace(path)
        rows.append({"name": p.name, "model": p.spec, "weights": str(path), **score(p.ema.ema)})
    best = max(rows, key=lambda r: float(r["mAP50-95"]))
    shutil.copy2(str(best["weights"]), wdir / "best_peer.pt")
    for r in rows:
        LOGGER.info("mutual learning: %-24s mAP50-95 %.4f  mAP50 %.4f%s", r["name"], r["mAP50-95"], r["mAP50"],
                    "  (best: weights/best_peer.pt)" if r is best else "")  # fmt: skip
    return {"models": rows, "best": best["name"]}
