"""torchvision detectors as teachers: FPN features on the student's grid, detections as dense targets."""

import pytest
import torch

from detkd.errors import ConfigError, InputFileError
from detkd.teachers import build_teacher, detect_family
from detkd.teachers.dense import detections_to_dense
from detkd.teachers.torchvision_det import TorchvisionTeacher
from tests.helpers import Evil, tiny_distill

BUILDERS = ["fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn", "fcos_resnet50_fpn"]


@pytest.mark.parametrize("builder", BUILDERS)
def test_teacher_outputs_sit_on_the_student_grid(builder):
    teacher = build_teacher(f"torchvision:{builder}")
    assert isinstance(teacher, TorchvisionTeacher) and detect_family(f"torchvision:{builder}") == "torchvision"
    teacher.train()
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    out = teacher(torch.rand(2, 3, 64, 96))
    assert [tuple(f.shape) for f in out.features] == [(2, 256, 8, 12), (2, 256, 4, 6), (2, 256, 2, 3)]
    assert [(s.channels, s.stride) for s in out.specs] == [(256, 8), (256, 16), (256, 32)]
    head = out.heads["one2many"]
    assert head.cls_logits.shape == (2, 91, 96 + 24 + 6) and head.reg_max == 1
    assert teacher.names[1] == "person" and builder in teacher.describe()


def test_dense_targets_take_the_best_detection_containing_each_point():
    det = {
        "boxes": torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 8.0, 24.0, 24.0]]),
        "scores": torch.tensor([0.6, 0.8]),
        "labels": torch.tensor([2, 0]),
    }
    out = detections_to_dense([det], 3, (32, 32), (16,))  # 2x2 grid, centres at 8 and 24 px
    probs = out.cls_logits.sigmoid()[0]  # (3, 4)
    # every centre lies in the big box (label 2, 0.6) and in the small one (label 0, 0.8): the higher score wins
    torch.testing.assert_close(probs[0], torch.full((4,), 0.8))
    assert (probs[2] < 1e-5).all()
    torch.testing.assert_close(out.boxes_xyxy()[0, :, 0], torch.tensor([8.0, 8.0, 24.0, 24.0]))
    empty = detections_to_dense(
        [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}],
        3, (32, 32), (16,),
    )  # fmt: skip
    assert (empty.cls_logits.sigmoid() < 1e-5).all() and not empty.box_valid.any()
    assert out.box_valid.all()


def test_weights_file_sets_the_classes_and_is_loaded_safely(tmp_path):
    from torchvision.models.detection import fcos_resnet50_fpn

    path = tmp_path / "fcos5.pth"
    torch.save(fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5).state_dict(), path)
    teacher = build_teacher(f"torchvision:fcos_resnet50_fpn:{path}")
    assert teacher.num_classes == 5 and teacher.names == {i: f"class{i}" for i in range(5)}


def test_bad_specs_and_files_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown torchvision detector 'yolo'; valid: .*fcos_resnet50_fpn"):
        build_teacher("torchvision:yolo")
    with pytest.raises(InputFileError, match="nope.pth: teacher weights file not found"):
        build_teacher(f"torchvision:fcos_resnet50_fpn:{tmp_path / 'nope.pth'}")
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"x": Evil(marker)}, evil)
    with pytest.raises(InputFileError, match="evil.pth: not a torchvision state dict"):
        build_teacher(f"torchvision:fcos_resnet50_fpn:{evil}")
    assert not marker.exists()
    wrong = tmp_path / "wrong.pth"
    torch.save({"head.classification_head.cls_logits.weight": torch.zeros(9, 256, 3, 3)}, wrong)
    with pytest.raises(InputFileError, match="wrong.pth: "):
        build_teacher(f"torchvision:fcos_resnet50_fpn:{wrong}")


@pytest.mark.slow
def test_distill_from_a_torchvision_teacher(tiny_data, tmp_path):
    from detkd.engine.distiller import Distiller

    cmap = tmp_path / "map.yaml"
    cmap.write_text("map:\n  person: disk\n  car: ring\n")
    d = Distiller("torchvision:fcos_resnet50_fpn", "yolov8n.yaml", tiny_data, overrides=["feature.method=pkd"],
                  class_map=cmap)  # fmt: skip
    assert d.composite.box_method == "iou"
    last = tiny_distill(d, tmp_path)
    assert last["train/kd/feat"] > 0 and last["train/kd/cls"] > 0
