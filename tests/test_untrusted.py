"""No file detkd reads may run code: every entry point against payloads of several kinds.

Each payload (``tests.helpers.write_payload``) creates a marker file when whatever reads it runs what it says; the
tests first prove each one is live (plain pickle, or Ultralytics' own builder, runs it), then load it through every
detkd loader and command, and check the refusal names the file and the marker does not exist afterwards. Model
YAMLs (activation strings, layer names), dataset label caches and the built-in KD's ``distill_model`` are covered
the same way.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from detkd.checkpoints import load_checkpoint
from detkd.engine.resume import resume
from detkd.errors import DetkdError
from detkd.export import export_models
from detkd.students.ultralytics_yolo import build_student
from detkd.teachers import build_teacher, load_eval_model
from tests.helpers import PAYLOADS, Evil, evil_activation, write_payload

LIVE = ("pickle-reduce", "model-constructor", "yaml-activation", "yaml-layer", "getattr")  # code runs if trusted


@pytest.fixture(params=PAYLOADS)
def payload(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path, Path]:
    marker = tmp_path / "pwned"
    return request.param, write_payload(request.param, tmp_path / "evil.pt", marker), marker


@pytest.mark.parametrize("kind", LIVE)
def test_each_payload_runs_code_when_trusted(kind: str, tmp_path: Path):
    """The payloads are real: what a trusting loader does with them creates the marker (else the tests prove
    nothing)."""
    from ultralytics.nn.tasks import DetectionModel

    marker = tmp_path / "pwned"
    path = write_payload(kind, tmp_path / "evil.pt", marker)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # what plain pickle loading does
    if kind.startswith("yaml"):
        try:  # what rebuilding from an unchecked YAML does (the yaml-layer build then fails: the payload ran first)
            DetectionModel(ckpt["model"].yaml, nc=2, verbose=False)
        except AttributeError:
            assert kind == "yaml-layer"
    assert marker.exists(), f"payload {kind} is inert: the test would prove nothing"


def _resume_folder(evil_pt: Path, tiny_data: Path) -> Path:
    """A run folder that looks like a killed distill run whose resume.pt is the payload."""
    from detkd.engine.checkpointing import RESUME_FILE
    from detkd.engine.run_folder import RUN_META

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
    "load_checkpoint+rebuild": lambda p, d: load_eval_model(p),
    "student_pt": lambda p, d: build_student(p, 2, {0: "a", 1: "b"}),
    "teacher_auto": lambda p, d: build_teacher(p, nc=2),
    "teacher_ultralytics": lambda p, d: build_teacher(p, "ultralytics", nc=2),
    "teacher_yolov5_legacy": lambda p, d: build_teacher(p, "yolov5-legacy"),
    "teacher_rtdetr": lambda p, d: build_teacher(p, "rtdetr", nc=2),
    "teacher_torchvision": lambda p, d: build_teacher(f"torchvision:fasterrcnn_resnet50_fpn:{p}"),
    "teacher_ensemble": lambda p, d: build_teacher(_ensemble_yaml(p), nc=2, names={0: "a", 1: "b"}),
    "export": lambda p, d: export_models(p, "onnx", out_dir=p.parent / "x"),
    "resume": lambda p, d: resume(_resume_folder(p, d)),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_every_loader_refuses_every_payload(loader: str, payload: tuple[str, Path, Path], tiny_data: Path):
    kind, path, marker = payload
    with pytest.raises(DetkdError, match=r"(evil|resume)\.pt") as e:
        LOADERS[loader](path, tiny_data)
    assert len(str(e.value).splitlines()) == 1
    assert not marker.exists(), f"{loader} ran the {kind} payload"


@pytest.mark.parametrize("kind", PAYLOADS)
def test_the_restricted_loader_says_why(kind: str, tmp_path: Path):
    """Checkpoint-level payloads are refused while unpickling; YAML payloads when the model is rebuilt."""
    path = write_payload(kind, tmp_path / "evil.pt", tmp_path / "pwned")
    why = {
        "pickle-reduce": "outside the allow-list: posix.system",
        "model-constructor": "calls ultralytics.nn.tasks.DetectionModel with arguments",
        "module-constructor": "calls torch.nn.modules.conv.Conv2d with arguments",
        "yaml-activation": "the architecture YAML it holds: activation .* is not of the form nn.<Activation>",
        "yaml-layer": "the architecture YAML it holds: layer 0 .*'torch_safe_load' is not a known layer",
        "getattr": "outside the allow-list: builtins.getattr",
    }[kind]
    with pytest.raises(DetkdError, match=why):
        load_eval_model(path)
    if kind.startswith("yaml"):
        assert load_checkpoint(path)["model"].class_name == "DetectionModel"  # unpickling alone is inert


@pytest.mark.parametrize("command", ["eval", "export", "distill-teacher", "distill-student", "train", "builtin-kd"])
def test_cli_refuses_every_payload(command: str, payload, tiny_data: Path, tmp_path: Path, capsys):
    from detkd.cli import main

    kind, path, marker = payload
    argv = {
        "eval": ["eval", "--model", str(path), "--data", str(tiny_data), "--project", str(tmp_path / "runs")],
        "export": ["export", "--model", str(path), "--format", "onnx"],
        "distill-teacher": ["distill", "--teacher", str(path), "--student", "yolov8n.yaml", "--data", str(tiny_data)],
        "distill-student": ["distill", "--teacher", "yolov8n.yaml", "--student", str(path), "--data", str(tiny_data)],
        "train": ["train", "--model", str(path), "--data", str(tiny_data)],
        "builtin-kd": [
            "train",
            "--model",
            "yolov8n.yaml",
            "--data",
            str(tiny_data),
            "--train-arg",
            f"distill_model={path}",
        ],
    }[command]
    if command.startswith(("distill", "train", "builtin")):
        argv += ["--project", str(tmp_path / "runs"), "--epochs", "1", "--imgsz", "32", "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "evil.pt" in err and "Traceback" not in err
    assert not marker.exists(), f"{command} ran the {kind} payload"


@pytest.mark.parametrize("part", ["activation", "layer"])
@pytest.mark.parametrize("command", ["student", "teacher", "train", "ensemble-member"])
def test_model_yaml_files_run_no_code(part: str, command: str, tiny_data: Path, tmp_path: Path, capsys):
    """A model YAML is data: an activation or a layer name that would run code is refused, naming the file."""
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    from detkd.cli import main

    marker = tmp_path / "pwned"
    cfg = yaml_model_load("yolov8n.yaml")
    if part == "activation":
        cfg["activation"] = evil_activation(marker)
    else:
        inner = tmp_path / "inner.pt"
        torch.save({"model": Evil(marker)}, inner)
        cfg["backbone"][0] = [-1, 1, "torch_safe_load", [repr(str(inner))]]
    evil = tmp_path / "evil-model.yaml"
    evil.write_text(yaml.safe_dump(cfg))
    common = ["--data", str(tiny_data), "--project", str(tmp_path / "runs"), "--epochs", "1", "--imgsz", "32"]
    argv = {
        "student": ["distill", "--teacher", "yolov8n.yaml", "--student", str(evil), *common],
        "teacher": ["distill", "--teacher", str(evil), "--student", "yolov8n.yaml", *common],
        "train": ["train", "--model", str(evil), *common],
        "ensemble-member": ["distill", "--teacher", str(_ensemble_yaml(evil)), "--student", "yolov8n.yaml", *common],
    }[command]
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "evil-model.yaml" in err and "Traceback" not in err, err
    assert not marker.exists()


def _dataset_with_crafted_caches(source: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of a dataset with a label cache beside each split's labels that runs code when unpickled, and
    ``.npy`` files beside two images (Ultralytics would read one instead of the image, and delete the other)."""
    data, marker = tmp_path / "ds", tmp_path / "pwned"
    shutil.copytree(source.parent, data)
    for split in ("train", "val"):
        with (data / "labels" / f"{split}.cache").open("wb") as fh:
            np.save(fh, np.array(Evil(marker), dtype=object), allow_pickle=True)
    first, second = sorted((data / "images" / "train").iterdir())[:2]
    np.save(first.with_suffix(".npy"), np.full((64, 64, 3), 255, np.uint8))  # an all-white "image"
    first.with_suffix(".npy").touch()  # newer than its image: Ultralytics would read it instead
    second.with_suffix(".npy").write_bytes(b"notes of the user's, not an array")  # Ultralytics would delete it
    return data, marker


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_crafted_label_cache_is_never_read_and_the_dataset_is_not_written(tiny_data: Path, tmp_path: Path):
    """Ultralytics loads ``labels/<split>.cache`` with ``allow_pickle=True``; detkd trains on its own check of the
    labels, so a crafted cache never runs, and nothing is written into the dataset folder."""
    from detkd.cli import main

    data, marker = _dataset_with_crafted_caches(tiny_data, tmp_path)
    before = _files(data)
    argv = ["train", "--model", "yolov8n.yaml", "--data", str(data / "data.yaml"), "--epochs", "1", "--imgsz", "32",
            "--batch", "4", "--device", "cpu", "--project", str(tmp_path / "runs"), "--name", "t",
            "--train-arg", "cache=disk"]  # fmt: skip
    assert main(argv) == 0
    assert not marker.exists(), "a label cache was unpickled"
    assert len(list((tmp_path / "runs" / "t" / "data" / "npy" / "train").glob("*.npy"))) == 12  # cache=disk: here
    after = _files(data)
    assert after == before, f"files written or changed in the dataset: {sorted(set(after) ^ set(before))}"


@pytest.mark.slow
@pytest.mark.export
def test_int8_calibration_reads_no_label_cache_and_writes_nothing_into_the_dataset(
    trained_student, shapes_data, tmp_path
):
    """Ultralytics' exporter builds its calibration dataset like training does; detkd gives it the checked labels
    and its own resolved data YAML (so it never resolves, caches or downloads anything in the user's dataset)."""
    data, marker = _dataset_with_crafted_caches(shapes_data, tmp_path)
    before = _files(data)
    table = export_models(trained_student / "weights" / "best.pt", "openvino-int8", data=data / "data.yaml",
                          calib_images=8, latency_runs=2, out_dir=tmp_path / "export")  # fmt: skip
    assert table.row("openvino-int8").map is not None
    assert not marker.exists(), "a label cache was unpickled"
    assert _files(data) == before
