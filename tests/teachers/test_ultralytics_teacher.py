import torch

from detkd.students import ultralytics_yolo as uy
from detkd.teachers import build_teacher
from detkd.teachers.ultralytics_yolo import UltralyticsTeacher

NAMES = {i: f"c{i}" for i in range(3)}


def test_teacher_is_frozen_and_eval_locked():
    teacher = build_teacher("yolov8n.yaml", nc=3, names=NAMES)
    assert isinstance(teacher, UltralyticsTeacher)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    out = teacher(x)
    assert all(not f.requires_grad for f in out.features)
    assert [f.shape[1] for f in out.features] == [s.channels for s in teacher.specs]
    assert set(out.heads) == {"one2many"}
    assert out.heads["one2many"].cls_logits.shape[:2] == (2, 3)


def test_bn_statistics_do_not_move():
    teacher = build_teacher("yolov8n.yaml", nc=3, names=NAMES)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.train()
    teacher(torch.rand(4, 3, 64, 64) * 5)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_end2end_teacher_gives_both_branches():
    teacher = build_teacher("yolo26n.yaml", nc=3, names=NAMES)
    out = teacher(torch.rand(1, 3, 64, 64))
    assert set(out.heads) == {"one2many", "one2one"} and teacher.end2end and teacher.reg_max == 1
    assert "end-to-end" in teacher.describe()
    assert uy.count_parameters(teacher.model) > 0
