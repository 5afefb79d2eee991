"""An untrained teacher by accident is refused: a model YAML (in Ultralytics, ``yolov8m.yaml`` reads like "the
weights"), a torchvision builder without a weights file, an ensemble with such a member. On purpose it is allowed
(``--allow-random-teacher``, ``allow_random_teacher=True``, or ``DETKD_ALLOW_RANDOM_TEACHER=1`` as the test suite
sets), and the run record keeps the choice for resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from detkd.errors import InputFileError
from detkd.teachers import ALLOW_RANDOM_ENV, build_teacher, untrained

NAMES = {0: "disk", 1: "square", 2: "triangle"}


@pytest.fixture
def strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOW_RANDOM_ENV, raising=False)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("yolov8m.yaml", "a model YAML"),
        ("rtdetr-l.yaml", "a model YAML"),
        ("torchvision:fcos_resnet50_fpn", "a torchvision builder without a weights file"),
    ],
)
def test_untrained_specs_are_refused_in_one_line(strict: None, spec: str, reason: str) -> None:
    with pytest.raises(InputFileError) as e:
        build_teacher(spec, nc=3, names=NAMES)
    text = str(e.value)
    assert text.startswith(f"{spec}: {reason}") and "random network" in text and "--allow-random-teacher" in text
    assert "\n" not in text


def test_trained_specs_are_not_judged_untrained(tmp_path: Path) -> None:
    ens = tmp_path / "ens.yaml"
    ens.write_text("ensemble:\n  members:\n    - {teacher: yolov8n.yaml}\n")
    assert untrained("teacher.pt") is None
    assert untrained("torchvision:fcos_resnet50_fpn:fcos.pth") is None
    assert untrained(ens) is None  # judged member by member when built


def test_an_ensemble_member_without_weights_is_named(strict: None, tmp_path: Path) -> None:
    ens = tmp_path / "ens.yaml"
    ens.write_text("ensemble:\n  members:\n    - {teacher: yolov8n.yaml}\n")
    with pytest.raises(InputFileError, match=r"^yolov8n\.yaml: a model YAML"):
        build_teacher(ens, nc=3, names=NAMES)
    assert build_teacher(ens, nc=3, names=NAMES, allow_random=True).names == NAMES


def test_allowed_on_purpose(strict: None) -> None:
    teacher = build_teacher("yolov8n.yaml", nc=3, names=NAMES, allow_random=True)
    assert dict(teacher.names) == NAMES


def test_cli_refuses_before_training_and_the_flag_allows(strict: None, tiny_data: Path, tmp_path: Path) -> None:
    base = [sys.executable, "-m", "detkd", "distill", "--teacher", "yolov8n.yaml", "--student", "yolov8n.yaml",
            "--data", str(tiny_data), "--project", str(tmp_path), "--epochs", "1", "--imgsz", "64", "--batch", "4",
            "--device", "cpu", "--workers", "0"]  # fmt: skip
    out = subprocess.run([*base, "--name", "refused"], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "random network" in lines[0] and "--allow-random-teacher" in lines[0], out.stderr
    assert not (tmp_path / "refused").exists()  # nothing was started

    cache = [sys.executable, "-m", "detkd", "cache", "--teacher", "yolov8n.yaml", "--data", str(tiny_data),
             "--out", str(tmp_path / "cache"), "--imgsz", "64", "--device", "cpu"]  # fmt: skip
    out = subprocess.run(cache, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode != 0 and "--allow-random-teacher" in out.stderr

    out = subprocess.run([*base, "--name", "allowed", "--allow-random-teacher"], capture_output=True, text=True,
                         timeout=600, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    meta = json.loads((tmp_path / "allowed" / "detkd_run.json").read_text())
    assert meta["allow_random_teacher"] is True  # resume builds the same (random, seeded) teacher
