import pytest
import torch

from detkd.classmap import UNMAPPED_LOGIT, class_map_from_dict, load_class_map, map_by_name
from detkd.errors import ConfigError, InputFileError
from detkd.losses.logit import sigmoid_kd
from tests.conftest import REPO

COCO_LIKE = {0: "person", 1: "bicycle", 2: "car", 3: "motorcycle", 4: "bus", 5: "dog", 6: "truck"}
DRONE = {0: "Person", 1: "Car", 2: "Bicycle", 3: "OtherVehicle"}


def test_subset_rename_and_merge():
    cm = class_map_from_dict(
        {"map": {"person": "Person", "car": "Car", 1: "Bicycle", "motorcycle": 3, "bus": "OtherVehicle",
                 "truck": "OtherVehicle"}}, COCO_LIKE, DRONE)  # fmt: skip
    assert cm.sources == ((0,), (2,), (1,), (3, 4, 6))
    logits = torch.tensor([[[0.0], [1.0], [2.0], [-1.0], [4.0], [9.0], [3.0]]])  # (1, 7 teacher classes, 1 anchor)
    out = cm.apply(logits)
    assert out[0, :, 0].tolist() == [0.0, 2.0, 1.0, 4.0]  # OtherVehicle = max(motorcycle, bus, truck); dog dropped
    assert "OtherVehicle <- motorcycle + bus + truck" in cm.describe()


def test_student_class_without_teacher_gets_no_logit_kd():
    cm = class_map_from_dict({"person": "Person", "car": "Car"}, COCO_LIKE, DRONE)
    assert cm.mapped == [True, True, False, False]
    out = cm.apply(torch.zeros(2, 7, 5))
    assert (out[:, 2:] == UNMAPPED_LOGIT).all()
    student = torch.randn(2, 4, 5)
    mask = cm.class_mask(out)
    full = sigmoid_kd(student, out, reduction="sum", class_weights=mask)
    only_mapped = sigmoid_kd(student[:, :2], out[:, :2], reduction="sum")
    torch.testing.assert_close(full, only_mapped)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"persn": "Person"},
            "unknown teacher class 'persn' \\(did you mean 'person'\\?\\); valid teacher classes: person",
        ),
        ({"person": "People"}, "unknown student class 'People'.*valid student classes: Person, Car, Bicycle"),
        ({9: "Person"}, "teacher class index 9 out of range \\(0..6\\)"),
        ({"person": 4}, "student class index 4 out of range"),
        ([["person", "Person"]], "expected a mapping"),
        ({}, "expected a mapping"),
    ],
)
def test_bad_maps_are_clear_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        class_map_from_dict(data, COCO_LIKE, DRONE)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(InputFileError, match="nope.yaml: class map file not found"):
        load_class_map(tmp_path / "nope.yaml", COCO_LIKE, DRONE)
    bad = tmp_path / "bad.yaml"
    bad.write_text("map: {person: Persn}\n")
    with pytest.raises(ConfigError, match="bad.yaml: unknown student class 'Persn'"):
        load_class_map(bad, COCO_LIKE, DRONE)


def test_map_by_name():
    assert map_by_name(COCO_LIKE, {0: "car", 1: "person"}).sources == ((2,), (0,))
    assert map_by_name(COCO_LIKE, DRONE) is None  # case differs: an explicit map is asked for


def test_shipped_example_maps_coco80_to_hit_uav():
    import yaml

    coco80 = yaml.safe_load((REPO / "tests" / "data" / "coco80_names.yaml").read_text())
    cm = load_class_map(REPO / "datasets" / "class_maps" / "coco80_to_hituav.yaml", coco80, DRONE)
    named = {DRONE[s]: [coco80[t] for t in src] for s, src in enumerate(cm.sources)}
    assert named == {"Person": ["person"], "Car": ["car"], "Bicycle": ["bicycle"],
                     "OtherVehicle": ["motorcycle", "bus", "truck"]}  # fmt: skip


def _teacher_checkpoint(tmp_path, names):
    from detkd.students import ultralytics_yolo as uy

    model = uy.build_model_from_yaml("yolov8n.yaml", len(names), names)
    path = tmp_path / f"teacher{len(names)}.pt"
    torch.save({"model": model}, path)
    return path


def test_distiller_asks_for_a_map_when_classes_differ(tiny_data, tmp_path):
    from detkd.engine.distiller import Distiller
    from detkd.errors import PairingError

    path = _teacher_checkpoint(tmp_path, {0: "ring", 1: "cat", 2: "disk"})
    with pytest.raises(PairingError, match="not the data's.*--class-map"):
        Distiller(path, "yolov8n.yaml", tiny_data)
    d = Distiller(path, "yolov8n.yaml", tiny_data, overrides=["logit.weight=0"])  # feature and box KD need no map
    assert d.teacher.num_classes == 3


def test_distiller_applies_an_explicit_map_and_masks_unmapped_classes(tiny_data, tmp_path):
    from detkd.engine.distiller import Distiller
    from detkd.teachers.mapped import ClassMappedTeacher

    path = _teacher_checkpoint(tmp_path, {0: "ring", 1: "cat", 2: "disk"})
    cmap = tmp_path / "map.yaml"
    cmap.write_text("map:\n  ring: ring\n  disk: disk\n  cat: star\n")
    d = Distiller(path, "yolov8n.yaml", tiny_data, class_map=cmap)
    assert isinstance(d.teacher, ClassMappedTeacher) and d.teacher.num_classes == 6
    out = d.teacher(torch.rand(1, 3, 64, 64))
    names = list(d.data.names.values())
    expected = [1.0 if n in ("ring", "disk", "star") else 0.0 for n in names]
    assert out.heads["one2many"].class_mask.tolist() == expected
    assert out.heads["one2many"].cls_logits.shape[1] == 6


def test_distiller_maps_by_name_when_the_teacher_has_every_data_class(tiny_data, tmp_path):
    from detkd.data.dataset import load_data_spec
    from detkd.engine.distiller import Distiller
    from detkd.teachers.mapped import ClassMappedTeacher

    data_names = list(load_data_spec(tiny_data).names.values())
    names = dict(enumerate(["extra", *reversed(data_names)]))
    d = Distiller(_teacher_checkpoint(tmp_path, names), "yolov8n.yaml", tiny_data)
    assert isinstance(d.teacher, ClassMappedTeacher)
    assert [names[src[0]] for src in d.teacher.class_map.sources] == data_names
