"""Shared fixtures: offline Ultralytics, tiny synthetic data, tiny models, the shared real assets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault("YOLO_VERBOSE", "false")

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
