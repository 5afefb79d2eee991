"""Command-line mistakes: one line naming the option and the problem, exit status 2, before anything trains."""

from __future__ import annotations

import json
import shutil

import pytest

from detkd.cli import main


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def _distill(data, tmp_path, *extra, teacher="yolov8n.yaml"):
    return ["distill", "--teacher", teacher, "--student", "yolov8n.yaml", "--data", str(data), "--epochs", "1",
            "--imgsz", "32", "--device", "cpu", "--project", str(tmp_path / "runs"), *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--epochs", "0"], "--epochs 0: must be an integer >= 1"),
        (["--epochs", "-3"], "--epochs -3: must be an integer >= 1"),
        (["--imgsz", "-64"], "--imgsz -64: must be an integer >= 1 (a size in pixels"),
        (["--batch", "0"], "--batch 0: must be >= 1 (or -1, or a fraction in (0, 1), for AutoBatch"),
        (["--batch", "1.5"], "--batch 1.5: must be >= 1 (or -1, or a fraction in (0, 1), for AutoBatch"),
        (["--threads", "0"], "--threads 0: must be an integer >= 1"),
        (["--workers", "-1"], "--workers -1: must be an integer >= 0"),
        (["--device", "7"], "--device 7: no CUDA device 7 on this machine"),
        (["--device", "cuda"], "--device cuda: no CUDA device 0 on this machine"),
        (["--device", "gpu"], "--device 'gpu': expected cpu, a GPU index (0), several (0,1), or cuda:N"),
        (["--train-arg", "lrr0=0.1"], "unknown training argument 'lrr0' (did you mean 'lr0'?)"),
        (["--train-arg", "project=elsewhere"], "training argument 'project' is set by detkd: use --project"),
        (["--train-arg", "epochs=2"], "--train-arg epochs=2: use --epochs (given twice, one would be lost)"),
        (["--train-arg", "lr0=1e30"], "training argument lr0=1e+30: must be a number in (0, 1]"),
        (["--train-arg", "lr0=.nan"], "training argument lr0=nan: must be a finite number"),
        (["--set", "kd.logit.weight=.inf"], "kd.logit.weight: inf must be a finite number"),
    ],
)
def test_bad_options_are_one_line(extra, message, tiny_data, tmp_path, capsys):
    if "--device" in extra:
        import torch

        if torch.cuda.device_count() > 0 and extra[1] != "gpu":
            pytest.skip("checks the message on a machine without that GPU")
    assert main(_distill(tiny_data, tmp_path, *extra)) == 2
    assert message in _err(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("text", "value"), [("-1", -1), ("0.7", 0.7), ("8", 8)])
def test_batch_takes_what_ultralytics_takes(text, value):
    from detkd.cli import build_parser

    ns = build_parser().parse_args(["distill", "--batch", text])
    assert ns.batch == value and type(ns.batch) is type(value)


def test_train_command_checks_its_options_too(tiny_data, tmp_path, capsys):
    argv = ["train", "--model", "yolov8n.yaml", "--data", str(tiny_data), "--epochs", "0", "--device", "cpu"]
    assert main(argv) == 2 and "--epochs 0: must be an integer >= 1" in _err(capsys)


def test_an_exported_model_cannot_teach(tiny_data, tmp_path, capsys):
    onnx = tmp_path / "teacher.onnx"
    onnx.write_bytes(b"\x08\x07")
    assert main(_distill(tiny_data, tmp_path, teacher=str(onnx))) == 2
    assert "teacher.onnx: a teacher is an Ultralytics YOLO/RT-DETR .pt or model YAML" in _err(capsys)


def test_an_ensemble_that_lists_itself_is_one_line(tiny_data, tmp_path, capsys):
    ens = tmp_path / "ens.yaml"
    ens.write_text(f"ensemble:\n  members:\n    - teacher: yolov8n.yaml\n    - teacher: {ens}\n")
    assert main(_distill(tiny_data, tmp_path, teacher=str(ens))) == 2
    assert "ens.yaml: the ensemble includes itself" in _err(capsys)


@pytest.mark.parametrize("command", ["export", "demo"])
def test_an_output_folder_that_cannot_be_written_is_one_line(command, trained_student, tmp_path, capsys):
    out = "/proc/detkd-cannot-write-here"  # not writable even for root
    argv = {
        "export": ["export", "--model", str(trained_student / "weights" / "best.pt"), "--out", out],
        "demo": ["demo", "--quick", "--out", out],
    }[command]
    assert main(argv) == 2
    assert f"{out}: output folder is not writable" in _err(capsys)


def test_resume_refuses_flags_it_would_ignore(tmp_path, capsys):
    assert main(["distill", "--resume", str(tmp_path), "--epochs", "5", "--teacher", "t.pt"]) == 2
    assert "--epochs, --teacher cannot be given with it (only --device, --workers, --threads can)" in _err(capsys)


@pytest.mark.slow
def test_resume_refuses_a_replaced_teacher(trained_teacher, shapes_data, tmp_path, capsys):
    """The run records the SHA-256 of every file it distils from; a teacher replaced since then is refused."""
    teacher = tmp_path / "teacher.pt"
    shutil.copy(trained_teacher, teacher)
    argv = ["distill", "--teacher", str(teacher), "--student", "yolov8n.yaml", "--data", str(shapes_data), "--epochs",
            "2", "--imgsz", "32", "--batch", "16", "--device", "cpu", "--project", str(tmp_path), "--name", "kd",
            "--train-arg", "val=False", "--train-arg", "fraction=0.25"]  # fmt: skip
    assert main(argv) == 0
    run = tmp_path / "kd"
    meta = json.loads((run / "detkd_run.json").read_text())
    assert str(teacher.resolve()) in meta["inputs"]
    meta.pop("finished")  # as if killed after its first epoch
    (run / "detkd_run.json").write_text(json.dumps(meta))
    shutil.copy(run / "weights" / "last.pt", teacher)  # another model in the teacher's place
    state = _fake_resume_state(run)
    assert state.is_file()
    capsys.readouterr()
    assert main(["distill", "--resume", str(run)]) == 2
    assert f"{teacher.resolve()} changed since the run started" in _err(capsys)


def _fake_resume_state(run):
    """A resume.pt for epoch 1 of 2 (the finished run deleted its own)."""
    import torch

    path = run / "weights" / "resume.pt"
    torch.save({"format": 2, "epoch": 0, "epochs": 2}, path)
    return path
