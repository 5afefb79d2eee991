"""Every KD method, schedule and balancing mode through the real criterion on tiny YOLO pairs."""

import pytest
import torch

from detkd.engine.criterion import KD_ITEM_NAMES, NonFiniteLossError
from detkd.errors import PairingError
from tests.engine.test_criterion import _batch, _setup

FEATURE_METHODS = ["mse", "fine_grained", "fgd", "cwd", "mgd", "pkd", "relation"]
HEAD_CASES = {
    "bce": ["logit.method=bce"],
    "bce_bckd": ["logit.bce.weighting=bckd"],
    "bce_quality": ["logit.bce.weighting=quality", "logit.positions=teacher", "logit.teacher_conf=0"],
    "kl_teacher": ["logit.method=kl", "logit.positions=teacher", "logit.teacher_conf=0"],
    "bce_assigner": ["logit.positions=assigner"],
    "bce_add": ["logit.mode=add", "logit.weight=0.5"],
    "ld": ["box.method=ld"],
    "iou": ["box.method=iou", "box.iou.kind=iou"],
    "bounded_l2": ["box.method=bounded_l2"],
    "iou_all": ["box.method=iou", "box.positions=all"],
}
PAIRS = [("yolov8n.yaml", "yolov8s.yaml"), ("yolo26n.yaml", "yolo26s.yaml")]


def _step(overrides, pair=PAIRS[0]):
    student, teacher, composite, crit = _setup(*pair, overrides=overrides)
    student.train()
    batch = _batch()
    loss, items = crit(student(batch["img"]), batch)
    return student, teacher, composite, crit, loss, items


@pytest.mark.parametrize("pair", PAIRS, ids=["v8", "yolo26"])
@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_every_feature_method_trains_adapters_and_its_modules(method, pair):
    student, teacher, composite, crit, loss, items = _step(
        [f"feature.method={method}", "logit.weight=0", "box.weight=0"], pair
    )
    assert items["kd/feat"] > 0 and items["kd/cls"] == 0 and items["kd/box"] == 0
    assert set(crit.last_unweighted) >= {"kd/feat/p3", "kd/feat/p4", "kd/feat/p5"}
    loss.sum().backward()
    grads = [p.grad for p in composite.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert bool(grads) is composite.methods["kd/feat"].adapted  # relation compares raw maps: no adapters
    assert all(p.grad is None for p in teacher.parameters())
    assert (len(getattr(composite.feature_method, "generators", [])) == 3) is (method == "mgd")
    assert (len(getattr(composite.feature_method, "relations", [])) == 3) is (method == "fgd")
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


@pytest.mark.parametrize("pair", PAIRS, ids=["v8", "yolo26"])
@pytest.mark.parametrize("case", list(HEAD_CASES))
def test_every_head_method_gives_a_finite_positive_term(case, pair):
    if case == "ld" and "26" in pair[0]:
        with pytest.raises(PairingError, match="kd.box.method=ld needs DFL heads"):
            _setup(*pair, overrides=HEAD_CASES[case])
        return
    family = "kd/cls" if case.startswith(("bce", "kl")) else "kd/box"
    off = ["feature.weight=0", "box.weight=0" if family == "kd/cls" else "logit.weight=0"]
    *_, loss, items = _step([*off, *HEAD_CASES[case]], pair)
    assert torch.isfinite(loss).all() and items[family] > 0
    assert all(items[k] == 0 for k in KD_ITEM_NAMES if k != family)


def test_bounded_l2_only_pulls_where_the_student_is_worse_than_the_teacher():
    student, teacher, _, crit = _setup(overrides=["box.method=bounded_l2", "feature.weight=0", "logit.weight=0"])
    student.train()
    batch = _batch()
    preds = student(batch["img"])
    _, items = crit(preds, batch)
    assert items["kd/box"] > 0
    # A "teacher" that is exactly the student cannot be beaten by margin 0: the term vanishes.
    crit.teacher = lambda img: _student_as_teacher(student, preds, teacher)
    _, items = crit(preds, batch)
    assert items["kd/box"] == 0


def _student_as_teacher(student, preds, teacher):
    from detkd.students import ultralytics_yolo as uy
    from detkd.types import TeacherOutputs

    head = uy.detect_head(student)
    heads = {n: uy.head_outputs({k: v.detach() if torch.is_tensor(v) else v for k, v in raw.items()}, head)
             for n, raw in uy.split_branches(preds).items()}  # fmt: skip
    return TeacherOutputs(features=[f.detach() for f in uy.neck_features(preds)], specs=uy.feature_specs(student),
                          heads=heads)  # fmt: skip


def test_schedule_stop_skips_the_teacher_and_restores_the_class_loss(monkeypatch):
    student, _, composite, crit = _setup(overrides=[
        "logit.alpha=0.25", "logit.schedule.stop_epoch=2", "feature.schedule.stop_epoch=2",
        "box.schedule.stop_epoch=2"])  # fmt: skip
    student.train()
    batch = _batch()
    crit.start_epoch(1, 4, batches=10)
    loss, items = crit(student(batch["img"]), batch)
    assert composite.det_cls_scale == pytest.approx(0.25) and items["kd/cls"] > 0
    assert loss[1].item() == pytest.approx(0.25 * items["cls_loss"].item() * 2, rel=1e-5)
    crit.start_epoch(2, 4, batches=10)
    calls = []
    monkeypatch.setattr(crit, "teacher", lambda img: calls.append(1))
    loss, items = crit(student(batch["img"]), batch)
    assert calls == [] and all(items[k] == 0 for k in KD_ITEM_NAMES)
    assert loss[1].item() == pytest.approx(items["cls_loss"].item() * 2, rel=1e-5)


def test_warmup_ramps_the_weight_per_step():
    student, _, _, crit = _setup(overrides=["feature.schedule.warmup_epochs=1", "logit.weight=0",
                                                    "box.weight=0"])  # fmt: skip
    student.train()
    batch = _batch()
    preds = student(batch["img"])
    crit.start_epoch(0, 10, batches=4)
    _, first = crit(preds, batch)  # progress 0: off
    _, second = crit(preds, batch)  # progress 0.25
    assert first["kd/feat"] == 0 and second["kd/feat"] == pytest.approx(0.25 * crit.last_unweighted["kd/feat"])


@pytest.mark.parametrize("mode", ["loss", "grad"])
def test_balancing_holds_each_term_at_the_target_ratio(mode):
    _, _, composite, _, loss, items = _step([f"balance.mode={mode}", "balance.ratio=0.2",
                                                      "logit.weight=2"])  # fmt: skip
    det = items["box_loss"] + composite.det_cls_scale * items["cls_loss"] + items["dfl_loss"]
    assert {"kd/ratio/feat", "kd/ratio/cls", "kd/ratio/box"} <= set(items)
    assert items["kd/ratio/feat"] == pytest.approx(0.2, rel=1e-4)
    assert items["kd/ratio/cls"] == pytest.approx(0.4, rel=1e-4)  # ratio * logit weight
    if mode == "loss":  # first step: the averages are this step's values, so the shares are exact
        assert items["kd/feat"] == pytest.approx(0.2 * det.item(), rel=1e-4)
        assert items["kd/cls"] == pytest.approx(0.4 * det.item(), rel=1e-4)
    loss.sum().backward()
    assert torch.isfinite(loss).all()


def _loud_teacher_step(overrides):
    """A teacher whose feature maps are large (std 100: another family, or another normalisation)."""
    student, _, _, crit = _setup(overrides=overrides)
    real = crit.teacher

    def loud(img):
        out = real(img)
        gen = torch.Generator().manual_seed(0)
        out.features = [torch.randn(f.shape, generator=gen) * 100.0 for f in out.features]
        return out

    crit.teacher = loud
    student.train()
    batch = _batch()
    _, items = crit(student(batch["img"]), batch)
    return items, (items["box_loss"] + items["cls_loss"] + items["dfl_loss"]).item()


def test_balancing_tames_a_swamping_term():
    """Large teacher features make the MSE term swamp the detection loss; balancing holds it at its share."""
    items, det = _loud_teacher_step(["logit.weight=0", "box.weight=0"])
    assert items["kd/feat"] > 100 * det
    items, det = _loud_teacher_step(["logit.weight=0", "box.weight=0", "balance.mode=loss"])
    assert items["kd/feat"] == pytest.approx(0.5 * det, rel=1e-3)
    items, det = _loud_teacher_step(["logit.weight=0", "box.weight=0", "balance.mode=loss", "feature.weight=2"])
    assert items["kd/feat"] == pytest.approx(1.0 * det, rel=1e-3)  # the weight sets the share


def test_non_finite_kd_input_names_the_term_epoch_and_batch():
    student, _, _, crit = _setup(overrides=["feature.method=cwd"])
    student.train()
    batch = _batch()
    preds = student(batch["img"])
    preds["feats"][0] = preds["feats"][0] * float("inf")
    crit.start_epoch(3, 10, batches=5)
    expected = r"epoch 4, batch 1.*kd/feat: channel_wise_kd: student contains NaN or Inf"
    with pytest.raises(NonFiniteLossError, match=expected):
        crit(preds, batch)


def test_box_kd_only_where_the_teacher_has_a_box():
    """Teachers that give detections (torchvision) mark where their box targets exist; elsewhere no box KD."""
    import dataclasses

    student, _, _, crit = _setup(overrides=["box.method=iou", "feature.weight=0", "logit.weight=0"])
    real = crit.teacher

    def without_boxes(img):
        out = real(img)
        h = out.heads["one2many"]
        out.heads["one2many"] = dataclasses.replace(
            h, box_valid=torch.zeros(h.cls_logits.shape[0], h.cls_logits.shape[2])
        )
        return out

    student.train()
    batch = _batch()
    preds = student(batch["img"])
    _, items = crit(preds, batch)
    assert items["kd/box"] > 0
    crit.teacher = without_boxes
    _, items = crit(preds, batch)
    assert items["kd/box"] == 0
