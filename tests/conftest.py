"""Shared fixtures: offline Ultralytics, tiny synthetic data, tiny models, the shared real assets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")
# Most tests distil from tiny untrained teachers (model YAMLs) on purpose; tests/teachers/test_random_teacher.py
# clears this to check that detkd refuses them otherwise.
os.environ.setdefault("DETKD_ALLOW_RANDOM_TEACHER", "1")

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("DETKD_ASSETS", REPO.parent / "shared" / "assets"))


def assets_path(*parts: str) -> Path:
    """A path under the shared assets, or a skip that says what is missing and how to provide it."""
    p = ASSETS.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared asset {p} not found (set DETKD_ASSETS to the assets folder to run this test)")
    return p


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dozen 64 px synthetic scenes (YOLO layout + data.yaml + COCO json for val)."""
    from detkd.data.synthetic import SceneConfig, generate_dataset

    root = tmp_path_factory.mktemp("tiny_data")
    generate_dataset(root, SceneConfig(n_train=12, n_val=6, size=64, min_size=5.0), seed=0)
    return root / "data.yaml"


# The tests' trained teacher: YOLOv8n on one-class synthetic shapes (64 px), about 100 s on 2 cores. At 25 epochs
# (200 steps, half of them Ultralytics' 100-iteration warmup) it landed at mAP50-95 0.029-0.048 over seeds 0-3 on
# this CPU, below the floor, so small float differences between machines decided whether 53 tests errored. At 50
# epochs seeds 1 and 3 (the weakest at 25 and 40 epochs) reach 0.139 and 0.100 (mAP50 0.40 and 0.31): enough to
# teach something and for an export gate to be able to fail, with twice the floor's margin. An untrained one scores ~0.
SHAPES = {"n_train": 128, "n_val": 16, "size": 64, "min_objects": 1, "max_objects": 3, "min_size": 16.0,
          "max_size_frac": 0.6, "max_distractors": 0, "one_class": True}  # fmt: skip
TEACHER_TRAIN = {"epochs": 50, "imgsz": 64, "batch": 16, "nbs": 16, "warmup_epochs": 1, "mosaic": 0.0,
                 "close_mosaic": 0, "lr0": 0.01, "device": "cpu", "workers": 0, "val": False, "seed": 0}  # fmt: skip
MIN_TEACHER_MAP = 0.05


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One-class synthetic shapes that a small detector learns in a few hundred CPU steps."""
    from detkd.data.synthetic import SceneConfig, generate_dataset

    root = tmp_path_factory.mktemp("shapes")
    generate_dataset(root, SceneConfig(**SHAPES), seed=0)  # type: ignore[arg-type]
    return root / "data.yaml"


@pytest.fixture(scope="session")
def trained_teacher(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher that detects something (trained once per test run; its val mAP is checked, so tests that rely on
    it cannot pass against a teacher that learned nothing)."""
    from detkd.data.dataset import load_data_spec
    from detkd.eval.coco import evaluate
    from detkd.eval.predict import TorchPredictor
    from detkd.students import ultralytics_yolo as uy

    project = tmp_path_factory.mktemp("teacher")
    # In a fresh interpreter: trained in-process, the weights depended on which tests had run before (same seed; some
    # global state leaks), so thresholds calibrated on one test order failed on another. A fresh process gives the
    # same bytes each time on a machine (checked: two runs, one weight hash, mAP50-95 0.249 for seed 0).
    script = (
        "import json, sys; from pathlib import Path; from detkd.engine.distiller import train_detector; "
        "a = json.loads(sys.argv[1]); Path(a['project'], 'best.txt').write_text(str(train_detector(**a).best))"
    )
    args = {"model": "yolov8n.yaml", "data": str(shapes_data), "project": str(project), "name": "teacher",
            "plots": False, **TEACHER_TRAIN}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(args)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, f"training the tests' teacher failed:\n{proc.stderr[-4000:]}"
    best = Path((project / "best.txt").read_text())
    res = evaluate(TorchPredictor(uy.load_detection_model(best)), load_data_spec(shapes_data), "val", imgsz=64)
    assert res.map50_95 >= MIN_TEACHER_MAP, f"the tests' teacher learned too little (mAP50-95 {res.map50_95:.4f})"
    return best


@pytest.fixture(scope="session")
def trained_student(trained_teacher: Path, shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A distill run folder whose student detects something: started from the trained teacher's weights and
    distilled from it for 3 epochs (logit weight 2), through the CLI."""
    from detkd.cli import main

    project = tmp_path_factory.mktemp("student")
    rc = main(
        [
            "distill", "--teacher", str(trained_teacher), "--student", str(trained_teacher),
            "--data", str(shapes_data), "--epochs", "3", "--imgsz", "64", "--batch", "16", "--device", "cpu",
            "--project", str(project), "--name", "kd", "--set", "kd.logit.weight=2",
            "--train-arg", "nbs=16", "--train-arg", "mosaic=0", "--train-arg", "warmup_epochs=0",
        ]
    )  # fmt: skip
    assert rc == 0
    return project / "kd"


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)


@pytest.fixture(scope="session")
def distilled_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny end-to-end distillation through the CLI (teacher and student from YAML, 1 epoch at imgsz 64);
    Ultralytics' log lines are kept in ``<project>/ultralytics.log``."""
    import logging

    from detkd.cli import main

    project = tmp_path_factory.mktemp("runs")
    ul, handler = logging.getLogger("ultralytics"), logging.FileHandler(project / "ultralytics.log")
    level = ul.level
    ul.setLevel(logging.INFO)  # YOLO_VERBOSE=false sets ERROR; its console handler stays at ERROR
    ul.addHandler(handler)
    rc = main(
        [
            "distill",
            "--teacher", "yolov8s.yaml",
            "--student", "yolov8n.yaml",
            "--data", str(tiny_data),
            "--epochs", "1", "--imgsz", "64", "--batch", "4", "--device", "cpu",
            "--project", str(project), "--name", "kd",
            "--set", "kd.logit.weight=2",
        ]
    )  # fmt: skip
    ul.removeHandler(handler)
    ul.setLevel(level)
    handler.close()
    assert rc == 0
    return project / "kd"
