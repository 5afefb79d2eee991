"""Data files a careless user (or an attacker) hands detkd: refused within seconds with one line, or used exactly as
detkd's check reports them (the training datasets take their labels from the check)."""

from __future__ import annotations

import logging
import os
import shutil
import time

import pytest

from detkd._io import read_yaml
from detkd.data.checks import split_report, validate_split
from detkd.data.dataset import load_data_spec
from detkd.errors import InputFileError
from tests.data.test_bad_input import GOOD_ROW, _add, _dataset


def test_a_yaml_bomb_is_refused_in_seconds(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10^9 values
    (tmp_path / "data.yaml").write_text("\n".join(lines) + "\nnames: *a8\ntrain: x\nval: x\n")
    started = time.perf_counter()
    with pytest.raises(InputFileError, match=r"data.yaml: data YAML expands to more than 1,000,000 values"):
        load_data_spec(tmp_path / "data.yaml")
    assert time.perf_counter() - started < 5


def test_a_recursive_yaml_is_refused(tmp_path):
    (tmp_path / "kd.yaml").write_text("a: &a [1, *a]\n")
    with pytest.raises(InputFileError, match="refers to a node that contains it"):
        read_yaml(tmp_path / "kd.yaml", "KD config")


def test_endless_sources_are_refused_at_once(tmp_path):
    root = tmp_path / "ds"
    _dataset(root)
    (root / "data.yaml").write_text("train: /dev/zero\nval: images/val\nnames: [a, b]\n")
    with pytest.raises(InputFileError, match=r"'train: /dev/zero' is a device or a FIFO"):
        load_data_spec(root / "data.yaml")
    with pytest.raises(InputFileError, match="is not a regular file"):
        load_data_spec("/dev/zero")


@pytest.mark.parametrize("option", ["--kd", "--class-map"])
def test_a_binary_file_given_as_a_yaml_is_one_line(option, tiny_data, tmp_path, capsys):
    from detkd.cli import main

    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    argv = ["distill", "--teacher", "yolov8n.yaml", "--student", "yolov8n.yaml", "--data", str(tiny_data),
            "--project", str(tmp_path), "--device", "cpu", option, str(binary)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        "weights.bin: is a binary file, not a " + ("KD config" if option == "--kd" else "class map") + " (text)"
    )
    assert "Traceback" not in "\n".join(err)


def test_a_symlink_loop_counts_each_image_once_and_training_reads_the_same_list(tmp_path, caplog):
    root = tmp_path / "ds"
    yaml_path = _dataset(root, n=4)
    os.symlink(root / "images" / "train", root / "images" / "train" / "loop")
    spec = load_data_spec(yaml_path)
    with caplog.at_level(logging.WARNING):
        report = validate_split(spec, "train")
    assert report.images == 4 and "leads back to" in caplog.text
    spec.reports["train"], spec.reports["val"] = report, validate_split(spec, "val")
    resolved = spec.write_resolved(tmp_path / "run" / "data.yaml")
    listed = (tmp_path / "run" / "data" / "train.txt").read_text().split()
    assert len(listed) == 4 and resolved.is_file()


def test_splits_resolve_under_path_only(tmp_path, monkeypatch):
    """A ``path:`` that does not hold the split is an error (it used to fall back to the working directory)."""
    root = tmp_path / "ds"
    _dataset(root)
    other = tmp_path / "cwd"
    _dataset(other)
    monkeypatch.chdir(other)  # has images/train and images/val of its own
    (tmp_path / "data.yaml").write_text(
        f"path: {root / 'images'}\ntrain: images/train\nval: images/val\nnames: [a, b]\n"
    )
    with pytest.raises(InputFileError, match="points nowhere under the dataset root .* exists under the working dir"):
        load_data_spec(tmp_path / "data.yaml")


def test_path_pointing_to_a_file_and_a_split_that_is_one_image_are_errors(tmp_path):
    root = tmp_path / "ds"
    yaml_path = _dataset(root)
    yaml_path.write_text(f"path: {yaml_path}\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    with pytest.raises(InputFileError, match="is a file .* it must be the dataset folder"):
        load_data_spec(yaml_path)
    yaml_path.write_text("train: images/train/good0.png\nval: images/val\nnames: [a, b]\n")
    with pytest.raises(InputFileError, match="is a single image; a split is a folder of images or a .txt list"):
        load_data_spec(yaml_path)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ("names: [car, person, car]", "class name 'car' is used twice \\(classes 0 and 2\\)"),
        ('nc: "80"\nnames: [a]', "'nc' must be an integer, got the str '80' \\(write nc: 80 without quotes\\)"),
    ],
)
def test_duplicate_class_names_and_quoted_nc_are_clear_errors(tmp_path, names, message):
    root = tmp_path / "ds"
    yaml_path = _dataset(root)
    yaml_path.write_text(f"train: images/train\nval: images/val\n{names}\n")
    with pytest.raises(InputFileError, match=message):
        load_data_spec(yaml_path)


def test_a_label_path_that_is_a_folder_skips_its_image(tmp_path):
    root = tmp_path / "ds"
    yaml_path = _dataset(root)
    _add(root, "odd.png", label=None)
    (root / "labels" / "train" / "odd.txt").mkdir()
    report = validate_split(load_data_spec(yaml_path), "train")
    assert [(k.image.name, k.problem) for k in report.skipped] == [
        ("odd.png", "label path is not a file (a folder or a device)")
    ]
    with pytest.raises(InputFileError, match="odd.txt: label path is not a file"):
        validate_split(load_data_spec(yaml_path), "train", bad_samples="fail")


def test_a_label_file_mixing_boxes_and_polygons_trains_as_the_report_says(tmp_path):
    """Box rows stay boxes and polygon rows become their bounding boxes; the dataset Ultralytics trains on holds
    exactly those boxes (it used to drop such an image while detkd counted it usable)."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_yolo_dataset
    from ultralytics.utils import DEFAULT_CFG

    from detkd.data.checked_dataset import checked_labels

    root = tmp_path / "ds"
    yaml_path = _dataset(root)
    _add(root, "mixed.png", label=GOOD_ROW + "1 0.1 0.1 0.3 0.1 0.3 0.4 0.1 0.4\n")
    spec = load_data_spec(yaml_path)
    report = split_report(spec, "train")
    split_report(spec, "val")
    assert report.images == 4 and report.boxes == 5 and report.polygons == 1 and not report.skipped
    data = spec.write_resolved(tmp_path / "run" / "data.yaml")
    args = get_cfg(DEFAULT_CFG, {"imgsz": 32})
    with checked_labels(report.samples):
        ds = build_yolo_dataset(args, str(tmp_path / "run" / "data" / "train.txt"), 2, spec.to_ultralytics())
    assert len(ds.labels) == 4 and sum(len(lb["cls"]) for lb in ds.labels) == 5
    mixed = next(lb for lb in ds.labels if lb["im_file"].endswith("mixed.png"))
    assert sorted(mixed["cls"].ravel().tolist()) == [0.0, 1.0]
    assert mixed["bboxes"][1].tolist() == pytest.approx([0.2, 0.25, 0.2, 0.3])
    assert data.is_file() and '"polygon_rows_as_boxes": 1' in (tmp_path / "run" / "data" / "report.json").read_text()


def test_train_equal_to_val_and_a_folder_listed_twice_are_warned_about(tmp_path, caplog):
    root = tmp_path / "ds"
    yaml_path = _dataset(root)
    yaml_path.write_text("train: [images/train, images/train, images/train]\nval: images/train\nnames: [a, b]\n")
    with caplog.at_level(logging.WARNING):
        load_data_spec(yaml_path)
    assert "lists" in caplog.text and "more than once" in caplog.text
    yaml_path.write_text("train: images/train\nval: images/train\nnames: [a, b]\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        load_data_spec(yaml_path)
    assert "train and val are the same images" in caplog.text


def test_a_copied_dataset_is_not_written_to(tmp_path, tiny_data):
    """No label cache (or anything else) appears in the dataset folder after the check and a resolved copy."""
    data = tmp_path / "ds"
    shutil.copytree(tiny_data.parent, data)
    before = sorted(p for p in data.rglob("*"))
    spec = load_data_spec(data / "data.yaml")
    for split in ("train", "val"):
        split_report(spec, split)
    spec.write_resolved(tmp_path / "run" / "data.yaml")
    assert sorted(p for p in data.rglob("*")) == before
