"""Scoring a model trained on other classes (e.g. a COCO teacher) on the data's classes through a class map."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from detkd.classmap import ClassMap
from detkd.data.dataset import load_data_spec
from detkd.errors import PairingError
from detkd.eval.coco import evaluate
from detkd.eval.predict import ClassMappedPredictor, data_class_map, on_data_classes
from tests.eval.test_coco import _OraclePredictor

DATA = {0: "disk", 1: "ring", 2: "square", 3: "window", 4: "triangle", 5: "star"}
# a "teacher" of 8 classes in another order: data class i is teacher class TEACHER_INDEX[i]
TEACHER_INDEX = [7, 0, 5, 2, 6, 3]
TEACHER = {**{t: DATA[i] for i, t in enumerate(TEACHER_INDEX)}, 1: "person", 4: "dog"}


class _Fixed:
    name, max_batch = "fixed", None

    def __init__(self, raw: np.ndarray, end2end: bool) -> None:
        self.raw, self.end2end = raw, end2end

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.raw


def test_dense_outputs_take_the_best_mapped_class_and_keep_boxes():
    cmap = ClassMap({0: "a", 1: "b", 2: "c"}, {0: "x", 1: "y"}, ((0, 2), ()))
    raw = np.random.default_rng(0).random((2, 4 + 3, 5), dtype=np.float32)
    out = ClassMappedPredictor(_Fixed(raw, False), cmap)(raw)
    assert out.shape == (2, 4 + 2, 5)
    np.testing.assert_array_equal(out[:, :4], raw[:, :4])
    np.testing.assert_allclose(out[:, 4], np.maximum(raw[:, 4], raw[:, 6]))
    assert not out[:, 5].any()  # a data class no model class maps to is never predicted


def test_end_to_end_detections_are_renamed_or_dropped():
    cmap = ClassMap({0: "a", 1: "b", 2: "c"}, {0: "x", 1: "y"}, ((2,), (0,)))
    raw = np.array([[[0, 0, 5, 5, 0.9, 0], [1, 1, 6, 6, 0.8, 1], [2, 2, 7, 7, 0.7, 2]]], np.float32)
    out = ClassMappedPredictor(_Fixed(raw, True), cmap)(raw)
    assert out[0, :, 5].tolist() == [1, 0, 0] and out[0, :, 4].tolist() == pytest.approx([0.9, 0.0, 0.7])


def test_which_map_scores_a_model_on_the_data(tmp_path):
    assert data_class_map(DATA, DATA) is None
    by_name = data_class_map(TEACHER, DATA)  # the model has every data class (and more): mapped by name
    assert by_name is not None and by_name.sources == tuple((t,) for t in TEACHER_INDEX)
    with pytest.raises(PairingError, match=r"teacher\.pt: its classes .* are not the data.s .*--class-map"):
        data_class_map({0: "person", 1: "dog"}, DATA, source="teacher.pt")
    path = tmp_path / "map.yaml"
    path.write_text("map:\n  person: disk\n  dog: disk\n")
    assert data_class_map(TEACHER, DATA, path).sources[0] == (1, 4)


class _TeacherOracle(_OraclePredictor):
    """The val ground truth as a model of the TEACHER classes would output it."""

    def __call__(self, x):
        out = super().__call__(x)
        out[..., 5] = np.take(TEACHER_INDEX, out[..., 5].astype(int))
        return out


def test_a_perfect_model_of_other_classes_scores_one_through_its_map(tiny_data, tmp_path):
    spec = load_data_spec(tiny_data)
    res = evaluate(on_data_classes(_TeacherOracle(spec, 64), data_class_map(TEACHER, spec.names)), spec, "val",
                   imgsz=64, batch=4)  # fmt: skip
    assert res.metrics["AP"] == pytest.approx(1.0, abs=1e-3)
    path = tmp_path / "map.yaml"  # leave "star" out: its objects are missed, every other class stays perfect
    path.write_text("map:\n" + "".join(f"  {n}: {n}\n" for n in DATA.values() if n != "star"))
    res = evaluate(on_data_classes(_TeacherOracle(spec, 64), data_class_map(TEACHER, spec.names, path)), spec,
                   "val", imgsz=64, batch=4)  # fmt: skip
    assert res.per_class["disk"] == pytest.approx(1.0, abs=1e-3)
    assert res.per_class["star"] in (0.0, None) and res.metrics["AP"] < 0.999


def _copy(tiny_data: Path, root: Path, names: list[str], order: list[int]) -> Path:
    """The tiny data with class ``i`` stored as index ``order[i]`` named ``names[order[i]]`` (labels rewritten)."""
    shutil.copytree(tiny_data.parent, root)
    (root / "annotations" / "instances_val.json").unlink()  # ground truth from the YOLO labels, named as below
    for label in (root / "labels").rglob("*.txt"):
        rows = [line.split() for line in label.read_text().splitlines() if line.strip()]
        label.write_text("".join(f"{order[int(r[0])]} {' '.join(r[1:])}\n" for r in rows))
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames: {names}\n")
    return root / "data.yaml"


def test_cli_eval_asks_for_a_map_then_scores_through_it(distilled_run, tiny_data, tmp_path, capsys):
    from detkd.cli import main

    model = str(distilled_run / "weights" / "best.pt")
    same = _copy(tiny_data, tmp_path / "same", list(DATA.values()), list(range(6)))
    reverse = [5 - i for i in range(6)]  # the model's class i is the data's class 5 - i, called c<i>
    other = _copy(tiny_data, tmp_path / "other", [f"c{5 - j}" for j in range(6)], reverse)
    assert main(["eval", "--model", model, "--data", str(same), "--imgsz", "64", "--out", str(tmp_path / "e1")]) == 0
    before = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", "--model", model, "--data", str(other), "--imgsz", "64"]) == 2
    assert "--class-map" in capsys.readouterr().err

    def detections(out: Path) -> int:
        return int(json.loads((out / "metrics.json").read_text())["detections"])

    reference = detections(tmp_path / "e1")
    assert reference > 0, "a model that detects nothing cannot tell a map from no map"
    cmap = tmp_path / "rename.yaml"
    cmap.write_text("map:\n" + "".join(f"  {n}: c{i}\n" for i, n in DATA.items()))
    argv = ["eval", "--model", model, "--data", str(other), "--imgsz", "64", "--class-map", str(cmap)]
    assert main([*argv, "--out", str(tmp_path / "e2")]) == 0
    mapped = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert detections(tmp_path / "e2") == reference  # every class kept, renamed: the same detections, scored alike
    for k, v in before.items():
        if isinstance(v, float) and k != "images_per_second":
            assert mapped[k] == pytest.approx(v, abs=1e-9), k
    cmap.write_text("map:\n" + "".join(f"  {n}: c{i}\n" for i, n in DATA.items() if i < 3))
    assert main([*argv, "--out", str(tmp_path / "e3")]) == 0
    assert 0 < detections(tmp_path / "e3") < reference  # classes left out are never predicted


@pytest.mark.export
@pytest.mark.slow
def test_cli_export_gates_a_model_of_other_classes_through_its_map(distilled_run, tiny_data, tmp_path, capsys):
    from detkd.cli import main

    reverse = [5 - i for i in range(6)]
    other = _copy(tiny_data, tmp_path / "other", [f"c{5 - j}" for j in range(6)], reverse)
    argv = ["export", "--model", str(distilled_run / "weights" / "best.pt"), "--format", "onnx", "--data", str(other),
            "--imgsz", "64", "--runs", "2"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "refused")]) == 2
    assert "--class-map" in capsys.readouterr().err and not (tmp_path / "refused").exists()  # refused before work
    cmap = tmp_path / "rename.yaml"
    cmap.write_text("map:\n" + "".join(f"  {n}: c{i}\n" for i, n in DATA.items()))
    assert main([*argv, "--class-map", str(cmap), "--out", str(tmp_path / "x")]) == 0
    row = json.loads((tmp_path / "x" / "export_table.json").read_text())["rows"][0]
    assert row["format"] == "onnx" and row["passed"] and row["map"] is not None
