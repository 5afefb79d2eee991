"""Offline, label-free and cross-modal distillation from the command line, end to end on tiny synthetic data."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from detkd.cli import main

pytestmark = pytest.mark.slow

TRAIN = ["--epochs", "1", "--imgsz", "64", "--batch", "8", "--device", "cpu", "--train-arg", "close_mosaic=0"]


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def _kd_terms(run: Path) -> dict[str, float]:
    with (run / "kd_terms.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return {k: float(v) for k, v in rows[-1].items()}


@pytest.fixture(scope="module")
def cli_cache(trained_teacher, shapes_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_cache") / "cache"
    rc = main(["-q", "cache", "--teacher", str(trained_teacher), "--data", str(shapes_data), "--out", str(out),
               "--imgsz", "64", "--device", "cpu"])  # fmt: skip
    assert rc == 0 and (out / "cache.json").is_file()
    return out


@pytest.fixture(scope="module")
def unlabeled_dir(shapes_data, tmp_path_factory):
    """Images without labels: copies of some validation images in a folder of their own."""
    out = tmp_path_factory.mktemp("unlabeled") / "images"
    out.mkdir()
    for p in sorted((shapes_data.parent / "images" / "val").glob("*.png"))[:12]:
        shutil.copy(p, out / p.name)
    return out


def test_distil_from_a_cache_without_the_teacher(cli_cache, shapes_data, tmp_path, capsys):
    rc = main(["distill", "--teacher-cache", str(cli_cache), "--student", "yolov8n.yaml", "--data", str(shapes_data),
               "--set", "kd.feature.weight=0", "--project", str(tmp_path), "--name", "c", *TRAIN])  # fmt: skip
    assert rc == 0
    terms = _kd_terms(tmp_path / "c")
    assert terms["data/soft_boxes"] > 0 and terms["kd/cls"] > 0 and terms["kd/box"] > 0
    meta = json.loads((tmp_path / "c" / "detkd_run.json").read_text())
    assert meta["teacher_cache"] == str(cli_cache) and meta["teacher_on_val"] is None


def test_cache_and_unlabeled_images_with_pseudo_labels(cli_cache, shapes_data, unlabeled_dir, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(cli_cache, cache)
    # the unlabeled images join the cache (a cache of the same key resumes: only they are new)
    teacher = json.loads((cache / "cache.json").read_text())["key"]["teacher"]
    rc = main(["-q", "cache", "--teacher", teacher, "--data", str(shapes_data), "--unlabeled", str(unlabeled_dir),
               "--out", str(cache), "--imgsz", "64", "--device", "cpu"])  # fmt: skip
    assert rc == 0
    rc = main(["distill", "--teacher-cache", str(cache), "--student", "yolov8n.yaml", "--data", str(shapes_data),
               "--unlabeled", str(unlabeled_dir), "--set", "kd.feature.weight=0", "--set", "kd.unlabeled.fraction=0.25",
               "--set", "kd.unlabeled.pseudo_labels=true", "--set", "kd.unlabeled.pseudo_conf=0.2",
               "--project", str(tmp_path), "--name", "u", *TRAIN])  # fmt: skip
    assert rc == 0
    terms = _kd_terms(tmp_path / "u")
    batches = -(-128 // 6)  # 6 labelled + 2 unlabeled per batch of 8
    assert terms["data/unlabeled_images"] == 2 * batches
    assert terms["data/pseudo_labels"] > 0
    listed = (tmp_path / "u" / "data" / "unlabeled.txt").read_text().split()
    assert len(listed) == 12


def test_live_teacher_with_unlabeled_images(trained_teacher, shapes_data, unlabeled_dir, tmp_path):
    rc = main(["distill", "--teacher", str(trained_teacher), "--student", "yolov8n.yaml",
               "--data", str(shapes_data), "--unlabeled", str(unlabeled_dir),
               "--set", "kd.unlabeled.pseudo_labels=true", "--set", "kd.unlabeled.pseudo_conf=0.2",
               "--project", str(tmp_path), "--name", "live", *TRAIN])  # fmt: skip
    assert rc == 0
    terms = _kd_terms(tmp_path / "live")
    assert terms["data/unlabeled_images"] > 0 and terms["data/pseudo_labels"] > 0


def test_cross_modal_cache_from_paired_images(trained_teacher, tmp_path):
    """The teacher sees the first modality (the scenes it was trained on), the student trains on the second."""
    from detkd.data.synthetic import SceneConfig, generate_dataset
    from tests.conftest import SHAPES

    root = generate_dataset(tmp_path / "pair", SceneConfig(**{**SHAPES, "n_train": 24, "n_val": 8, "paired": True}))
    cache = tmp_path / "cache"
    rc = main(["-q", "cache", "--teacher", str(trained_teacher), "--data", str(root / "ir" / "data.yaml"),
               "--pair-dir", str(root / "images" / "train"), "--out", str(cache), "--imgsz", "64",
               "--device", "cpu"])  # fmt: skip
    assert rc == 0
    manifest = json.loads((cache / "cache.json").read_text())
    assert manifest["key"]["pair_dir"] == str((root / "images" / "train").resolve())
    rc = main(["distill", "--teacher-cache", str(cache), "--student", "yolov8n.yaml", "--data",
               str(root / "ir" / "data.yaml"), "--set", "kd.feature.weight=0", "--project", str(tmp_path),
               "--name", "x", *TRAIN])  # fmt: skip
    assert rc == 0


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("feature", "feature KD (mse) needs the teacher's feature maps, which a teacher cache does not hold"),
        ("imgsz", "the cache was built at 64 px and this run trains at 96 px"),
        ("empty_unlabeled", "unlabeled image source has no images"),
        ("both", "give --teacher or --teacher-cache, not both"),
    ],
)
def test_offline_mistakes_are_one_line(case, message, cli_cache, shapes_data, tmp_path, capsys):
    args = ["distill", "--teacher-cache", str(cli_cache), "--student", "yolov8n.yaml", "--data", str(shapes_data),
            "--set", "kd.feature.weight=0", "--project", str(tmp_path), *TRAIN]  # fmt: skip
    if case == "feature":
        args.remove("kd.feature.weight=0")
        args.remove("--set")
    elif case == "imgsz":
        args[args.index("--imgsz") + 1] = "96"
    elif case == "empty_unlabeled":
        (tmp_path / "empty").mkdir()
        args += ["--unlabeled", str(tmp_path / "empty")]
    else:
        args += ["--teacher", "yolov8n.yaml"]
    assert main(args) == 2
    assert message in _err(capsys)


def test_missing_images_are_named(cli_cache, shapes_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(shapes_data.parent, data)
    extra = data / "images" / "train" / "extra.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(extra), np.full((64, 64, 3), 7, np.uint8))
    (data / "labels" / "train" / "extra.txt").write_text("")
    text = (data / "data.yaml").read_text().replace(str(shapes_data.parent), str(data))
    (data / "data.yaml").write_text(text)
    rc = main(["distill", "--teacher-cache", str(cli_cache), "--student", "yolov8n.yaml",
               "--data", str(data / "data.yaml"), "--set", "kd.feature.weight=0", "--project", str(tmp_path),
               *TRAIN])  # fmt: skip
    assert rc == 2
    err = _err(capsys)
    assert "1 of 129 training images are not in the cache" in err and "extra.png" in err


def test_a_missing_pair_is_one_line(trained_teacher, shapes_data, tmp_path, capsys):
    (tmp_path / "pairs").mkdir()
    rc = main(["cache", "--teacher", str(trained_teacher), "--data", str(shapes_data), "--pair-dir",
               str(tmp_path / "pairs"), "--out", str(tmp_path / "c"), "--imgsz", "64", "--device", "cpu"])  # fmt: skip
    assert rc == 2
    assert "has no paired image" in _err(capsys)


def test_kill_9_then_resume_a_cache_run_with_unlabeled_images_equals_the_uninterrupted_run(tiny_data, tmp_path):
    """A run from a teacher cache, with unlabeled images mixed into its batches and pseudo-labels, continues after
    kill -9 exactly as it would have run (the mixed batches' sequence included)."""
    import subprocess

    from tests.engine.test_resume import _cli, _env, _kill_after_next_checkpoint, _results, _student_weights

    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for p in sorted((tiny_data.parent / "images" / "val").glob("*.png")):
        shutil.copy(p, unlabeled / p.name)
    cache = tmp_path / "cache"
    assert main(["-q", "cache", "--teacher", "yolov8s.yaml", "--data", str(tiny_data), "--unlabeled", str(unlabeled),
                 "--out", str(cache), "--imgsz", "64", "--conf", "0.001", "--device", "cpu"]) == 0  # fmt: skip

    def args(name: str) -> list[str]:
        return ["distill", "--teacher-cache", str(cache), "--student", "yolov8n.yaml", "--data", str(tiny_data),
                "--unlabeled", str(unlabeled), "--set", "kd.feature.weight=0", "--set", "kd.unlabeled.fraction=0.5",
                "--set", "kd.unlabeled.pseudo_labels=true", "--set", "kd.unlabeled.pseudo_conf=0.001",
                "--epochs", "4", "--imgsz", "64", "--batch", "4", "--device", "cpu", "--workers", "0",
                "--project", str(tmp_path), "--name", name, "--train-arg", "val=False"]  # fmt: skip

    ref = subprocess.run(_cli(*args("ref")), env=_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*args("killed")), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import random

    assert _kill_after_next_checkpoint(proc, run / "weights" / "resume.pt", random.Random(3))
    done = subprocess.run(_cli("distill", "--resume", str(run)), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert _kd_terms(run)["data/unlabeled_images"] > 0 and _kd_terms(run)["data/pseudo_labels"] > 0
    assert _kd_terms(run) == pytest.approx(_kd_terms(tmp_path / "ref"), rel=1e-4)
    for got, want in zip(_results(run), _results(tmp_path / "ref")):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    a, b = _student_weights(tmp_path / "ref"), _student_weights(run)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
