"""Every detkd entry point that reads a checkpoint refuses a malicious one, and nothing in it runs.

The payload (``tests.helpers.Evil``) creates a marker file when unpickled; each case loads it through one loader and
checks both the refusal message (naming the file) and that the marker does not exist afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from detkd.checkpoints import load_checkpoint
from detkd.engine.distiller import resume
from detkd.errors import DetkdError
from detkd.export import export_models
from detkd.students.ultralytics_yolo import build_student
from detkd.teachers import build_teacher, load_eval_model
from tests.helpers import Evil


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": Evil(marker), "ema": None}, path)
    return path, marker


def _resume_folder(evil_pt: Path, tiny_data: Path) -> Path:
    """A run folder that looks like a killed distill run whose resume.pt is the payload."""
    from detkd.engine.checkpointing import RESUME_FILE
    from detkd.engine.distiller import RUN_META

    run = evil_pt.parent / "run"
    (run / "weights").mkdir(parents=True)
    (run / RUN_META).write_text(json.dumps({"kind": "train", "model": "yolov8n.yaml", "train_args": {}}))
    (run / "data.yaml").write_text(tiny_data.read_text())
    (run / "weights" / RESUME_FILE).write_bytes(evil_pt.read_bytes())
    return run


def _ensemble_yaml(evil_pt: Path) -> Path:
    y = evil_pt.parent / "ens.yaml"
    y.write_text(f"ensemble:\n  members:\n    - teacher: yolov8n.yaml\n    - teacher: {evil_pt}\n")
    return y


LOADERS: dict[str, Callable[[Path, Path], Any]] = {
    "load_checkpoint": lambda p, d: load_checkpoint(p),
    "student_pt": lambda p, d: build_student(p, 2, {0: "a", 1: "b"}),
    "teacher_auto": lambda p, d: build_teacher(p, nc=2),
    "teacher_ultralytics": lambda p, d: build_teacher(p, "ultralytics", nc=2),
    "teacher_yolov5_legacy": lambda p, d: build_teacher(p, "yolov5-legacy"),
    "teacher_rtdetr": lambda p, d: build_teacher(p, "rtdetr", nc=2),
    "teacher_torchvision": lambda p, d: build_teacher(f"torchvision:fasterrcnn_resnet50_fpn:{p}"),
    "teacher_ensemble": lambda p, d: build_teacher(_ensemble_yaml(p), nc=2, names={0: "a", 1: "b"}),
    "eval_model": lambda p, d: load_eval_model(p),
    "export": lambda p, d: export_models(p, "onnx", out_dir=p.parent / "x"),
    "resume": lambda p, d: resume(_resume_folder(p, d)),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_every_loader_refuses_a_malicious_checkpoint(loader: str, evil: tuple[Path, Path], tiny_data: Path):
    path, marker = evil
    with pytest.raises(DetkdError, match=r"(evil|resume)\.pt.*(refusing to load|not a torchvision state dict)"):
        LOADERS[loader](path, tiny_data)
    assert not marker.exists(), f"{loader} executed the pickle payload"


@pytest.mark.parametrize("command", ["eval", "export", "distill-teacher", "distill-student"])
def test_cli_refuses_a_malicious_checkpoint(command: str, evil: tuple[Path, Path], tiny_data: Path, tmp_path, capsys):
    from detkd.cli import main

    path, marker = evil
    argv = {
        "eval": ["eval", "--model", str(path), "--data", str(tiny_data)],
        "export": ["export", "--model", str(path), "--format", "onnx"],
        "distill-teacher": ["distill", "--teacher", str(path), "--student", "yolov8n.yaml", "--data", str(tiny_data)],
        "distill-student": ["distill", "--teacher", "yolov8n.yaml", "--student", str(path), "--data", str(tiny_data)],
    }[command]
    if command.startswith("distill"):
        argv += ["--project", str(tmp_path / "runs"), "--epochs", "1", "--imgsz", "32", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "evil.pt: refusing to load" in err and "Traceback" not in err
    assert not marker.exists()
