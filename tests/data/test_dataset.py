import shutil

import pytest

from detkd.data.checks import check_label_file, validate_split
from detkd.data.dataset import load_data_spec
from detkd.data.split_lists import label_path_for
from detkd.errors import InputFileError


@pytest.fixture()
def data_copy(tiny_data, tmp_path):
    root = tmp_path / "ds"
    shutil.copytree(tiny_data.parent, root)
    yaml_path = root / "data.yaml"
    yaml_path.write_text(yaml_path.read_text().replace(str(tiny_data.parent), str(root)))
    return yaml_path


def test_valid_yaml_resolves_paths(data_copy):
    spec = load_data_spec(data_copy)
    assert spec.nc == 6 and spec.split_paths("train")[0].is_dir()
    assert validate_split(spec, "train").images == 12


def test_relative_paths_resolve_against_the_yaml_folder(data_copy, monkeypatch, tmp_path):
    data_copy.write_text("train: images/train\nval: images/val\nnames: [a, b, c, d, e, f]\n")
    monkeypatch.chdir(tmp_path)
    assert load_data_spec(data_copy).root == data_copy.parent.resolve()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("val: images/val\nnames: [a]\n", "key 'train' is missing"),
        ("train: nowhere\nval: images/val\nnames: [a]\n", "'train: nowhere' points nowhere"),
        ("train: images/train\nval: images/val\n", "needs 'names'"),
        ("train: images/train\nval: images/val\nnc: 3\nnames: [a, b]\n", "does not match the 2 entries"),
        ("path: /does/not/exist\ntrain: a\nval: b\nnames: [a]\n", "dataset root"),
        ("[1, 2\n", "not valid YAML"),
    ],
)
def test_bad_yaml_names_file_and_problem(data_copy, content, message):
    data_copy.write_text(content)
    with pytest.raises(InputFileError, match=message) as e:
        load_data_spec(data_copy)
    assert str(data_copy) in str(e.value)


def test_missing_yaml():
    with pytest.raises(InputFileError, match="data YAML file not found"):
        load_data_spec("/nope/data.yaml")


def test_polygon_rows_become_boxes_and_missing_labels_are_background(tmp_path):
    label = tmp_path / "p.txt"
    label.write_text("2 0.1 0.2 0.3 0.2 0.3 0.6\n")
    ((cls, cx, cy, w, h),) = check_label_file(label, nc=3).rows
    assert cls == 2 and (cx, cy) == pytest.approx((0.2, 0.4)) and (w, h) == pytest.approx((0.2, 0.4))
    assert check_label_file(tmp_path / "missing.txt", nc=3).rows == []
    assert label_path_for(tmp_path / "images" / "train" / "a.jpg") == tmp_path / "labels" / "train" / "a.txt"
