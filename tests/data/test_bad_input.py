"""The bad-input table of docs/trust.md, one test per row: what detkd does with each kind of broken dataset or model
file."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detkd.data.checks import scan_split, validate_split
from detkd.data.coco import ground_truth_for_split
from detkd.data.dataset import load_data_spec
from detkd.errors import DetkdError, InputFileError

GOOD_ROW = "0 0.5 0.5 0.25 0.25\n"


def _image(path: Path, mode: str = "RGB", size: int = 32, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, (size, size), dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).convert(mode)
    im.save(path, format=fmt)
    return path


def _dataset(root: Path, n: int = 3) -> Path:
    """``n`` good 32 px samples per split and a data YAML with two classes."""
    for split in ("train", "val"):
        for i in range(n):
            _image(root / "images" / split / f"good{i}.png")
            label = root / "labels" / split / f"good{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text(GOOD_ROW)
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [a, b]\n")
    return root / "data.yaml"


def _add(root: Path, name: str, label: str | None = GOOD_ROW, split: str = "train", **image_kw) -> Path:
    img = _image(root / "images" / split / name, **image_kw)
    if label is not None:
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split / Path(name).with_suffix(".txt")).write_text(label)
    return img


# --- images -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"this is not an image", "image does not decode"), (b"", "image file is empty")],
)
def test_undecodable_or_empty_image_is_skipped_or_fails(tmp_path, content, problem, caplog):
    data = _dataset(tmp_path)
    bad = _add(tmp_path, "bad.png")
    bad.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        report = validate_split(load_data_spec(data), "train")
    assert [(k.image, k.problem.split(" (")[0]) for k in report.skipped] == [(bad, problem)]
    assert report.images == 3 and bad not in [s.image for s in report.samples]
    assert f"{bad}: {problem}" in caplog.text and "skipped" in caplog.text
    with pytest.raises(InputFileError, match=f"{bad}: {problem}"):
        validate_split(load_data_spec(data), "train", bad_samples="fail")


def test_image_under_ten_pixels_is_skipped(tmp_path):
    data = _dataset(tmp_path)
    _add(tmp_path, "tiny.png", size=8)
    (skip,) = scan_split(load_data_spec(data), "train").skipped
    assert "8x8" in skip.problem and "at least 10 px" in skip.problem


def test_wrong_extensions(tmp_path):
    """PNG content named .jpg is read by its content; a listed file of an unsupported type is skipped; image-type
    files Ultralytics cannot read inside an image folder are ignored and counted."""
    data = _dataset(tmp_path)
    _add(tmp_path, "png_inside.jpg", fmt="PNG")
    _image(tmp_path / "images" / "train" / "anim.gif", fmt="GIF")
    (tmp_path / "images" / "train" / "clip.mp4").write_bytes(b"\0" * 16)
    report = scan_split(load_data_spec(data), "train")
    assert report.images == 4 and not report.skipped
    assert sorted(p.name for p in report.unsupported) == ["anim.gif", "clip.mp4"]
    listed = tmp_path / "list.txt"
    listed.write_text("images/train/good0.png\nimages/train/anim.gif\n")
    data.write_text("train: list.txt\nval: images/val\nnames: [a, b]\n")
    report = scan_split(load_data_spec(data), "train")
    assert report.images == 1 and "'.gif' is not an image type Ultralytics reads" in report.skipped[0].problem


@pytest.mark.parametrize(("mode", "kind"), [("L", "grayscale"), ("I;16", "16-bit"), ("RGBA", "4-channel"),
                                            ("P", "palette")])  # fmt: skip
def test_grayscale_16bit_4channel_images_are_read_as_3_channel_8bit(tmp_path, mode, kind):
    from ultralytics.data.dataset import YOLODataset

    data = _dataset(tmp_path, n=1)
    img = _add(tmp_path, f"odd_{kind}.png", mode=mode)
    spec = load_data_spec(data)
    report = scan_split(spec, "train")
    assert report.images == 2 and report.kinds == {kind: 1} and f"1 {kind} read as 3-channel 8-bit" in report.summary()
    ds = YOLODataset(img_path=str(img.parent), imgsz=32, augment=False, data={"names": spec.names, "channels": 3})
    sample = ds[ds.im_files.index(str(img))]
    assert sample["img"].shape == (3, 32, 32) and sample["img"].dtype == torch.uint8 and len(sample["cls"]) == 1


def test_dim_16bit_image_is_warned_about(tmp_path, caplog):
    data = _dataset(tmp_path, n=1)
    img = tmp_path / "images" / "train" / "thermal.png"
    Image.fromarray(np.full((32, 32), 1200, np.uint16)).save(img)
    with caplog.at_level(logging.WARNING):
        validate_split(load_data_spec(data), "train")
    assert f"{img}: 16-bit image with values up to 1200 of 65535" in caplog.text


def test_truncated_jpeg_is_repaired_in_the_run_folder_not_in_place(tmp_path):
    data = _dataset(tmp_path)
    img = _add(tmp_path, "cut.jpg", fmt="JPEG")
    img.write_bytes(img.read_bytes()[:-2])  # drop the end-of-image marker
    original = img.read_bytes()
    spec = load_data_spec(data)
    spec.reports["train"] = validate_split(spec, "train")
    (sample,) = spec.reports["train"].repaired
    assert sample.image == img and "marker restored" in sample.repairs[0]
    listing = Path(spec.write_resolved(tmp_path / "run" / "data.yaml").parent / "data" / "train.txt")
    copy = next(Path(p) for p in listing.read_text().split() if p.endswith("cut.jpg"))
    assert copy.parent.parent == tmp_path / "run" / "data" / "repaired" / "train" and not copy.is_symlink()
    assert copy.read_bytes() == original + b"\xff\xd9" and img.read_bytes() == original


# --- labels -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("0 0.5 0.5 0.1", "expected 'class cx cy w h' (5 columns) or a polygon, got 4 columns"),
        ("0 0.5 0.5 0.1 0.1 0.2", "got 6 columns"),
        ("0 0.5 abc 0.1 0.1", "non-numeric value"),
        ("0 0.5 nan 0.1 0.1", "non-finite value"),
        ("0 1.5 0.5 0.1 0.1", "coordinates must be normalised to [0, 1]"),
        ("0 0.5 -0.2 0.1 0.1", "coordinates must be normalised to [0, 1]"),
        ("2 0.5 0.5 0.1 0.1", "class id 2 is outside 0..1"),
        ("1.5 0.5 0.5 0.1 0.1", "class id 1.5 is outside 0..1"),
    ],
)
def test_malformed_label_row_skips_its_image_naming_file_and_line(tmp_path, row, problem):
    data = _dataset(tmp_path)
    img = _add(tmp_path, "bad.png", label=GOOD_ROW + row + "\n")
    label = tmp_path / "labels" / "train" / "bad.txt"
    report = scan_split(load_data_spec(data), "train")
    (skip,) = report.skipped
    assert skip.image == img and skip.where == f"{label}:2" and problem in skip.problem
    with pytest.raises(InputFileError, match=f"{label}:2: "):
        validate_split(load_data_spec(data), "train", bad_samples="fail")


def test_coordinates_within_one_percent_are_accepted_as_ultralytics_does(tmp_path):
    data = _dataset(tmp_path)
    _add(tmp_path, "edge.png", label="0 1.005 0.5 0.2 0.2\n")
    report = scan_split(load_data_spec(data), "train")
    assert not report.skipped and report.boxes == 4


def test_zero_size_boxes_and_duplicate_rows_are_dropped_without_touching_the_file(tmp_path):
    data = _dataset(tmp_path)
    text = GOOD_ROW + GOOD_ROW + "1 0.5 0.5 0 0.1\n1 0.3 0.3 0.1 0.1\n"
    img = _add(tmp_path, "messy.png", label=text)
    spec = load_data_spec(data)
    spec.reports["train"] = validate_split(spec, "train")
    (sample,) = spec.reports["train"].repaired
    assert sample.image == img and [r[0] for r in sample.rows] == [0, 1]
    assert sample.repairs == ["line 2: duplicate row dropped", "line 3: zero-size box dropped"]
    run_yaml = spec.write_resolved(tmp_path / "run" / "data.yaml")
    listed = [Path(p) for p in (run_yaml.parent / "data" / "train.txt").read_text().split()]
    link = next(p for p in listed if p.name.endswith("messy.png"))
    assert link.resolve() == img.resolve()
    cleaned = (link.parent.parent / "labels" / link.with_suffix(".txt").name).read_text().splitlines()
    assert len(cleaned) == 2 and (tmp_path / "labels" / "train" / "messy.txt").read_text() == text
    report = json.loads((run_yaml.parent / "data" / "report.json").read_text())
    assert report["train"]["repaired"][0]["repairs"][0] == "line 2: duplicate row dropped"


def test_labels_without_images_and_images_without_labels_are_counted(tmp_path, caplog):
    data = _dataset(tmp_path)
    _add(tmp_path, "empty_scene.png", label=None)
    _add(tmp_path, "blank_label.png", label="")
    (tmp_path / "labels" / "train" / "lost.txt").write_text(GOOD_ROW)
    (tmp_path / "labels" / "train" / "classes.txt").write_text("a\nb\n")
    with caplog.at_level(logging.INFO):
        report = validate_split(load_data_spec(data), "train")
    assert report.background == 2 and report.images == 5 and not report.changed
    assert report.orphan_labels == [tmp_path / "labels" / "train" / "lost.txt"]
    assert "2 background (no labels)" in caplog.text and "1 label files have no image and are ignored" in caplog.text


def test_split_without_a_usable_image_is_an_error(tmp_path):
    data = _dataset(tmp_path, n=0)
    _add(tmp_path, "a.png", label="5 0.5 0.5 0.1 0.1\n")
    _add(tmp_path, "b.png", split="val")
    with pytest.raises(InputFileError, match=r"data.yaml: split 'train' has no usable image \(1 skipped\)"):
        validate_split(load_data_spec(data), "train")


# --- data YAML and COCO json ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ({"id": 7, "image_id": 1, "category_id": 99, "bbox": [0, 0, 4, 4]}, "annotation 7 has category_id 99"),
        ({"id": 8, "image_id": 42, "category_id": 1, "bbox": [0, 0, 4, 4]}, "annotation 8 refers to image_id 42"),
    ],
)
def test_coco_json_with_unknown_category_or_image_ids_is_an_error(tmp_path, annotation, message):
    data = _dataset(tmp_path)
    gt = {"images": [{"id": i + 1, "file_name": f"good{i}.png", "width": 32, "height": 32} for i in range(3)],
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], "annotations": [annotation]}  # fmt: skip
    path = tmp_path / "annotations" / "instances_val.json"
    path.parent.mkdir()
    path.write_text(json.dumps(gt))
    with pytest.raises(InputFileError, match=f"{path}: {message}"):
        ground_truth_for_split(load_data_spec(data), "val")


def test_skipped_images_leave_the_coco_ground_truth(tmp_path):
    data = _dataset(tmp_path)
    bad = _add(tmp_path, "bad.png", split="val")
    bad.write_bytes(b"broken")
    gt, _, images, _ = ground_truth_for_split(load_data_spec(data), "val")
    assert len(images) == 3 and bad not in images and len(gt["images"]) == 3 and len(gt["annotations"]) == 3


# --- models -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cfg", "head"), [("yolov8n-seg.yaml", "Segment"), ("yolov8n-pose.yaml", "Pose")])
def test_segment_or_pose_checkpoint_is_refused_as_student_and_teacher(tmp_path, cfg, head):
    from ultralytics.nn.tasks import PoseModel, SegmentationModel

    from detkd.students.ultralytics_yolo import build_student
    from detkd.teachers import build_teacher

    model = (SegmentationModel if head == "Segment" else PoseModel)(cfg, nc=2, verbose=False)
    path = tmp_path / f"{head.lower()}.pt"
    torch.save({"model": model}, path)
    task = {"Segment": "segmentation", "Pose": "pose"}[head]
    for load in (lambda: build_student(path, 2, {0: "a", 1: "b"}), lambda: build_teacher(path, nc=2)):
        with pytest.raises(DetkdError, match=f"{path.name}: checkpoint holds a {task} model, not an Ultralytics det"):
            load()


# --- end to end -------------------------------------------------------------------------------------------------------


def test_training_skips_and_repairs_without_touching_the_dataset(tmp_path, caplog):
    from detkd.engine.distiller import train_detector

    data = _dataset(tmp_path / "ds", n=4)
    root = data.parent
    broken = _add(root, "broken.png")
    broken.write_bytes(b"oops")
    _add(root, "dup.png", label=GOOD_ROW * 2)
    _add(root, "bad_cls.png", label="7 0.5 0.5 0.1 0.1\n", split="val")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with caplog.at_level(logging.WARNING):
        result = train_detector("yolov8n.yaml", data, project=tmp_path / "runs", name="t", epochs=1, imgsz=64, batch=2,
                                device="cpu", workers=0, plots=False, val=False)  # fmt: skip
    assert result.last.is_file()
    assert "data: train: 1 skipped, 1 repaired; val: 1 skipped, 0 repaired" in caplog.records[-1].getMessage()
    run_data = result.save_dir / "data"
    train = (run_data / "train.txt").read_text().split()
    val = (run_data / "val.txt").read_text().split()
    assert len(train) == 5 and not any("broken" in p for p in train) and any("dup.png" in p for p in train)
    assert len(val) == 4 and not any("bad_cls" in p for p in val)
    report = json.loads((run_data / "report.json").read_text())
    assert [k["problem"].split(" (")[0] for k in report["train"]["skipped"]] == ["image does not decode"]
    assert report["val"]["skipped"][0]["where"].endswith("bad_cls.txt:1")
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.suffix != ".cache"} == {
        p: b for p, b in before.items()
    }


def test_every_row_of_the_bad_input_table_names_a_test_that_exists():
    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "trust.md").read_text()
    assert "docs/trust.md" in (root / "README.md").read_text()  # the README links the table
    table = doc[doc.index("| Input | What detkd does | Test |") :].split("\n\n")[0].splitlines()[2:]
    defined = {m for p in (root / "tests").rglob("test_*.py") for m in re.findall(r"def (test_\w+)", p.read_text())}
    assert len(table) >= 50
    for row in table:
        named = re.findall(r"`(test_\w+)`", row) or re.findall(r"::(test_\w+)", row)
        if row.split("|")[3].strip() in ("same", "`test_untrusted.py`"):
            continue
        assert named and set(named) <= defined, row


def test_a_resumed_run_keeps_its_first_data_report(tmp_path):
    from detkd.data.checks import checked_data as _checked_data
    from detkd.engine.run_folder import write_data as _write_data

    data = _dataset(tmp_path / "ds")
    _add(tmp_path / "ds", "bad.png").write_bytes(b"x")
    run = tmp_path / "run"
    first = _write_data(_checked_data(data), run, resuming=False)
    report = (run / "data" / "report.json").read_text()
    assert json.loads(report)["train"]["skipped"] and "train.txt" in first.read_text()
    again = _checked_data(first)  # what resume reads: the run's own data.yaml, now clean
    assert not again.reports["train"].skipped
    _write_data(again, run, resuming=True)
    assert (run / "data" / "report.json").read_text() == report
