"""Distillation transfers knowledge: against a *trained* teacher, each KD family moves the student toward it.

A randomly initialised teacher has nearly constant feature maps and scores (it proves wiring, not transfer), so
these tests use the session's trained teacher (``trained_teacher``: YOLOv8n that detects one-class shapes). The
same student (same seed, same batches, same optimizer) trains for a few dozen steps with one KD family switched on
and with none; on held-out images, the distilled student must agree with the teacher clearly better than the
baseline does, in what that family transfers:

* logit KD: the student's class probabilities, weighted by the teacher's confidence;
* box KD: the student's box distances where the teacher sees an object;
* feature KD: the similarity (linear CKA) of the student's neck maps to the teacher's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

STEPS = 40
OFF = ["kd.feature.weight=0", "kd.logit.weight=0", "kd.box.weight=0"]
FAMILIES = {
    "logit": ["kd.feature.weight=0", "kd.box.weight=0", "kd.logit.weight=4"],
    "box": ["kd.feature.weight=0", "kd.logit.weight=0", "kd.box.weight=2"],
    "feature": ["kd.logit.weight=0", "kd.box.weight=0", "kd.feature.method=pkd", "kd.feature.weight=2"],
}
# Measured against the session teacher (mAP50-95 0.249; baseline CKA 0.127, class gap 0.213, box gap 3.79): pkd
# weight 2 -> CKA 0.350; logit weight 4 -> class gap 0.156; box weight 2 -> box gap 1.22. The default `mse` imitates
# through a learned 1x1 adapter, which can absorb the mapping: in 40 steps it moved CKA by -0.02 to +0.05 (weights
# 2/6/12), too little to tell from noise, so the feature family is checked with `pkd`.

pytestmark = pytest.mark.slow


def _batches(data: Path, split: str, n: int, batch: int = 16) -> list[dict[str, Any]]:
    """``n`` preprocessed batches of a split (no augmentation, fixed order), labels from detkd's own check."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.utils import DEFAULT_CFG

    from detkd.data.checked_dataset import checked_labels
    from detkd.data.checks import split_report
    from detkd.data.dataset import load_data_spec

    spec = load_data_spec(data)
    report = split_report(spec, split)
    args: Any = get_cfg(DEFAULT_CFG, {"imgsz": 64, "batch": batch})
    with checked_labels(report.samples):
        ds = build_yolo_dataset(args, str(spec.splits[split][0]), batch, spec.to_ultralytics(), mode="val")
    loader = build_dataloader(ds, batch, workers=0, shuffle=False)
    out = []
    for b in loader:
        b["img"] = b["img"].float() / 255
        out.append(b)
    return [out[i % len(out)] for i in range(n)]


@pytest.fixture(scope="module")
def setup(trained_teacher: Path, shapes_data: Path) -> dict[str, Any]:
    from detkd.teachers import build_teacher

    teacher = build_teacher(trained_teacher)
    return {
        "teacher": teacher,
        "train": _batches(shapes_data, "train", STEPS),
        "val": _batches(shapes_data, "val", 1),
        "names": teacher.names,
    }


def _train(setup: dict[str, Any], overrides: list[str]) -> Any:
    """The student after STEPS optimizer steps with the given KD settings (same seed, batches and optimizer)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG

    from detkd.config import load_kd_config
    from detkd.engine.criterion import KDCriterion
    from detkd.engine.distiller import build_composite
    from detkd.students import ultralytics_yolo as uy
    from detkd.utils.rng import seeded

    teacher, names = setup["teacher"], setup["names"]
    with seeded(0):
        student = uy.build_student("yolov8n.yaml", len(names), names)
        composite = build_composite(load_kd_config(None, overrides), student, teacher, len(names))
    student.args = get_cfg(DEFAULT_CFG, {"imgsz": 64})
    criterion = KDCriterion(student, teacher, composite)
    criterion.start_epoch(0, 1, STEPS)
    student.criterion = criterion
    params = [*student.parameters(), *(p for p in composite.parameters() if p.requires_grad)]
    opt = torch.optim.AdamW(params, lr=2e-3)
    student.train()
    torch.manual_seed(0)
    for b in setup["train"]:
        criterion.run_teacher(b)
        loss, _ = student.loss(b)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
    return student


def _cka(a: Tensor, b: Tensor) -> float:
    """Linear centred kernel alignment of two (N, C) feature sets (1: the same up to rotation and scale)."""
    a, b = a - a.mean(0), b - b.mean(0)
    cross = (a.t() @ b).norm() ** 2
    return float(cross / ((a.t() @ a).norm() * (b.t() @ b).norm()))


def _agreement(student: Any, setup: dict[str, Any]) -> dict[str, float]:
    """How close the student is to the teacher on held-out images, per family (lower is closer, CKA higher)."""
    from detkd.students import ultralytics_yolo as uy

    img = setup["val"][0]["img"]
    with torch.no_grad():
        t = setup["teacher"](img)
        preds = student(img)
    s = uy.head_outputs(uy.split_branches(preds)["one2many"], uy.detect_head(student))
    th = t.heads["one2many"]
    tp, sp = th.cls_logits.sigmoid(), s.cls_logits.sigmoid()
    w = tp.amax(1)  # the teacher's confidence per anchor
    cls_gap = float((w * (sp - tp).abs().mean(1)).sum() / w.sum())
    fg = w > 0.25
    box_gap = float((s.distances() - th.distances()).abs().mean(1)[fg].mean())
    feats = uy.neck_features(preds)
    cka = sum(
        _cka(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]), g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]))
        for f, g in zip(feats, t.features)
    ) / len(feats)
    return {"logit": cls_gap, "box": box_gap, "feature": cka, "teacher_fg": float(fg.sum())}


@pytest.fixture(scope="module")
def baseline(setup: dict[str, Any]) -> dict[str, float]:
    return _agreement(_train(setup, OFF), setup)


def test_the_teacher_is_confident_somewhere(baseline):
    assert baseline["teacher_fg"] >= 10, "the trained teacher sees no objects: the transfer tests would prove nothing"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_moves_the_student_toward_the_trained_teacher(family: str, setup, baseline):
    kd = _agreement(_train(setup, FAMILIES[family]), setup)
    if family == "feature":  # similarity: higher is closer
        assert kd["feature"] > baseline["feature"] + 0.05, (kd, baseline)
    else:  # gaps: lower is closer
        assert kd[family] < 0.8 * baseline[family], (kd, baseline)
