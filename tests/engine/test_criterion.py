import pytest
import torch
from ultralytics.cfg import get_cfg

from detkd.config import load_kd_config
from detkd.engine.criterion import KD_ITEM_NAMES, KDCriterion, NonFiniteLossError
from detkd.errors import PairingError
from detkd.losses.composite import KDComposite
from detkd.students import ultralytics_yolo as uy
from detkd.teachers import build_teacher

NAMES = {i: f"c{i}" for i in range(3)}


def _batch(n=2, size=64):
    return {
        "img": torch.rand(n, 3, size, size),
        "batch_idx": torch.tensor([0.0, 1.0, 1.0]),
        "cls": torch.tensor([[0.0], [2.0], [1.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.2], [0.7, 0.7, 0.3, 0.3]]),
    }


def _setup(student_yaml="yolov8n.yaml", teacher_yaml="yolov8s.yaml", overrides=()):
    teacher = build_teacher(teacher_yaml, nc=3, names=NAMES)
    student = uy.build_model_from_yaml(student_yaml, 3, NAMES)
    student.args = get_cfg()
    cfg = load_kd_config(None, list(overrides))
    composite = KDComposite(
        cfg,
        student_specs=uy.feature_specs(student),
        teacher_specs=teacher.specs,
        student_classes=3,
        teacher_classes=teacher.num_classes,
        student_reg_max=uy.reg_max(student),
        teacher_reg_max=teacher.reg_max,
    )
    return student, teacher, composite, KDCriterion(student, teacher, composite)


def test_loss_items_and_gradients_reach_student_and_adapters_only():
    student, teacher, composite, crit = _setup()
    student.train()
    batch = _batch()
    loss, items = crit(student(batch["img"]), batch)
    assert loss.shape == (6,) and torch.isfinite(loss).all()
    assert list(items) == ["box_loss", "cls_loss", "dfl_loss", *KD_ITEM_NAMES]
    assert all(items[k] > 0 for k in KD_ITEM_NAMES)
    loss.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in composite.adapters.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert set(crit.last_unweighted) >= {"kd/feat/p3", "kd/feat/p4", "kd/feat/p5", "kd/cls", "kd/box"}


def test_alpha_scales_the_detectors_class_loss():
    student, _, _, crit = _setup(overrides=["logit.alpha=0.25", "feature.weight=0", "box.weight=0"])
    student.train()
    batch = _batch()
    torch.manual_seed(0)
    preds = student(batch["img"])
    loss, items = crit(preds, batch)
    assert loss[1].item() == pytest.approx(0.25 * items["cls_loss"].item() * 2, rel=1e-5)  # x batch size
    assert loss[0].item() == pytest.approx(items["box_loss"].item() * 2, rel=1e-5)
    assert items["kd/feat"] == 0 and items["kd/box"] == 0


@pytest.mark.parametrize("mask", ["all", "gt", "teacher", "assigner"])
def test_feature_mask_modes(mask):
    student, _, _, crit = _setup(overrides=[f"feature.mse.positions={mask}", "logit.weight=0", "box.weight=0"])
    student.train()
    batch = _batch()
    _, items = crit(student(batch["img"]), batch)
    assert items["kd/feat"] > 0


def test_box_positions_from_teacher_confidence():
    student, _, _, crit = _setup(overrides=["box.positions=teacher", "box.teacher_conf=0.0"])
    student.train()
    batch = _batch()
    _, items = crit(student(batch["img"]), batch)
    assert items["kd/box"] > 0


def test_end2end_student_with_dense_teacher_uses_iou_box_kd():
    student, _, composite, crit = _setup(student_yaml="yolo26n.yaml")
    assert composite.box_method == "iou"
    student.train()
    batch = _batch()
    loss, items = crit(student(batch["img"]), batch)
    assert torch.isfinite(loss).all() and items["kd/box"] > 0
    crit.update()  # the end-to-end schedule advances without error


def test_non_finite_loss_stops_training():
    student, _, _, crit = _setup()
    student.train()
    batch = _batch()
    preds = student(batch["img"])
    preds["scores"] = preds["scores"] * float("nan")
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        crit(preds, batch)


def test_logit_kd_needs_matching_classes():
    teacher = build_teacher("yolov8n.yaml", nc=5, names={i: str(i) for i in range(5)})
    student = uy.build_model_from_yaml("yolov8n.yaml", 3, NAMES)
    kwargs = dict(
        student_specs=uy.feature_specs(student), teacher_specs=teacher.specs, student_classes=3, teacher_classes=5,
        student_reg_max=16, teacher_reg_max=16,
    )  # fmt: skip
    with pytest.raises(PairingError, match="logit KD needs the same classes.*kd.logit.weight=0"):
        KDComposite(load_kd_config(), **kwargs)
    assert KDComposite(load_kd_config(None, ["logit.weight=0"]), **kwargs).det_cls_scale == 1.0


@pytest.mark.parametrize(
    ("student_yaml", "teacher_yaml", "box_mode", "branches"),
    [
        ("yolo11n.yaml", "yolo11s.yaml", "ld", {"one2many"}),
        ("yolo26n.yaml", "yolo26s.yaml", "iou", {"one2many", "one2one"}),
        ("yolov8n.yaml", "yolo26s.yaml", "iou", {"one2many"}),
    ],
)
def test_all_families_work_across_yolo_generations(student_yaml, teacher_yaml, box_mode, branches):
    student, teacher, composite, crit = _setup(student_yaml=student_yaml, teacher_yaml=teacher_yaml)
    assert composite.box_method == box_mode
    student.train()
    batch = _batch()
    preds = student(batch["img"])
    assert set(uy.split_branches(preds)) == (branches if "26" in student_yaml else {"one2many"})
    loss, items = crit(preds, batch)
    assert torch.isfinite(loss).all() and all(items[k] > 0 for k in KD_ITEM_NAMES)
    per_branch = {k: v for k, v in crit.last_unweighted.items() if k.count("/") == 2 and "/feat/" not in k}
    if len(branches) > 1:  # each branch of an end-to-end pair is distilled and named; the term is their mean
        assert set(per_branch) == {f"kd/{f}/{b}" for f in ("cls", "box") for b in branches}
        assert all(torch.isfinite(v) and v > 0 for v in per_branch.values())
        for f in ("cls", "box"):
            mean = (per_branch[f"kd/{f}/one2many"] + per_branch[f"kd/{f}/one2one"]) / 2
            assert torch.allclose(crit.last_unweighted[f"kd/{f}"], mean)
    else:
        assert per_branch == {}
    loss.sum().backward()
    assert all(p.grad is None for p in teacher.parameters())


def _count_calls(module):
    calls = []
    module.register_forward_pre_hook(lambda m, a: calls.append(a[0]))
    return calls


def test_teacher_run_ahead_is_used_once_for_its_own_images_and_gives_the_same_losses():
    student, teacher, _, crit = _setup()
    crit.start_epoch(0, 3, 100)  # mid-schedule for every call below
    student.train()
    batch = _batch()
    torch.manual_seed(0)
    preds = student(batch["img"])
    reference, _ = crit(preds, batch)  # the teacher run inside the criterion
    calls = _count_calls(teacher)
    crit.run_teacher(batch)
    assert len(calls) == 1 and calls[0] is batch["img"]
    ahead, _ = crit(preds, batch)
    assert len(calls) == 1  # the outputs run ahead were used, not a second pass
    assert torch.allclose(ahead, reference)
    crit.run_teacher(batch)
    other = {**batch, "img": batch["img"].clone()}
    crit(preds, other)  # other images: the run-ahead outputs are not theirs
    assert len(calls) == 3 and calls[2] is other["img"]
    crit(preds, batch)  # the run-ahead outputs serve one call only
    assert len(calls) == 4


def test_teacher_does_not_run_ahead_while_every_kd_term_is_scheduled_off():
    _, teacher, _, crit = _setup(overrides=[f"{f}.schedule.stop_epoch=1" for f in ("feature", "logit", "box")])
    calls = _count_calls(teacher)
    crit.start_epoch(1, 3, 10)
    crit.run_teacher(_batch())
    assert calls == []
    crit.start_epoch(0, 3, 10)
    crit.run_teacher(_batch())
    assert len(calls) == 1


def test_epoch_terms_are_the_means_of_each_named_term_over_the_epochs_finite_steps():
    student, _, _, crit = _setup()
    crit.start_epoch(0, 3, 100)
    student.train()
    seen = []
    for seed in (0, 1):
        batch = _batch()
        torch.manual_seed(seed)
        _, items = crit(student(batch["img"]), batch)
        seen.append((dict(crit.last_unweighted), items))
    sums, counts = crit.epoch_terms()
    assert counts == dict.fromkeys(sums, 2)
    assert set(sums) == {f"unweighted/{k}" for k in seen[0][0]} | set(KD_ITEM_NAMES)
    for k in seen[0][0]:
        assert sums[f"unweighted/{k}"] == pytest.approx(sum(float(s[0][k]) for s in seen), rel=1e-5)
    assert sums["kd/cls"] == pytest.approx(sum(float(s[1]["kd/cls"]) for s in seen), rel=1e-5)
    assert crit.epoch_terms() == ({}, {})  # reset for the next epoch
