"""Bad input: one clear line naming the file and the problem, then a non-zero exit (never a traceback)."""

import shutil

import pytest

from detkd.cli import main


def _run(capsys, *args):
    rc = main(list(args))
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def _distill(tiny_data, tmp_path, *extra, teacher="yolov8n.yaml"):
    return ["distill", "--teacher", teacher, "--student", "yolov8n.yaml", "--data", str(tiny_data),
            "--epochs", "1", "--imgsz", "64", "--device", "cpu", "--project", str(tmp_path), *extra]  # fmt: skip


def test_missing_teacher_weights(capsys, tiny_data, tmp_path):
    rc, err = _run(capsys, *_distill(tiny_data, tmp_path, teacher=str(tmp_path / "missing.pt")))
    assert rc == 2 and err[-1] == f"detkd: error: {tmp_path / 'missing.pt'}: weights file not found"


def test_data_yaml_pointing_nowhere(capsys, tmp_path):
    data = tmp_path / "d.yaml"
    data.write_text("train: nowhere/images\nval: nowhere/images\nnames: [a]\n")
    rc, err = _run(capsys, "eval", "--model", "x.pt", "--data", str(data))
    assert rc == 2 and "d.yaml: 'train: nowhere/images' points nowhere" in err[-1]


def _copy_data(tiny_data, tmp_path):
    """A private copy of the tiny dataset (with a data YAML relative to it) that a test may break."""
    root = tmp_path / "ds"
    shutil.copytree(tiny_data.parent, root)
    (root / "data.yaml").write_text(
        "train: images/train\nval: images/val\nnames: [disk, ring, square, window, triangle, star]\n"
    )
    return root


def test_label_row_out_of_range(capsys, tiny_data, tmp_path):
    root = _copy_data(tiny_data, tmp_path)
    label = sorted((root / "labels" / "train").glob("*.txt"))[0]
    label.write_text("9 0.5 0.5 0.1 0.1\n")
    rc, err = _run(capsys, *_distill(root / "data.yaml", tmp_path, "--bad-samples", "fail"))
    assert rc == 2 and f"{label}:1: class id 9 is outside 0..5" in err[-1]


def test_image_that_does_not_decode(capsys, tiny_data, tmp_path):
    root = _copy_data(tiny_data, tmp_path)
    img = sorted((root / "images" / "val").glob("*.png"))[0]
    img.write_bytes(b"\x89PNG broken")
    rc, err = _run(capsys, *_distill(root / "data.yaml", tmp_path, "--bad-samples", "fail"))
    assert rc == 2 and str(img) in err[-1] and "does not decode" in err[-1]


def test_unpairable_teacher(capsys, tiny_data, tmp_path):
    rc, err = _run(capsys, *_distill(tiny_data, tmp_path, teacher="yolov8n-p2.yaml"))
    assert rc == 2 and "student has 3 feature levels" in err[-1] and "teacher has 4" in err[-1]


def test_bad_kd_override(capsys, tiny_data, tmp_path):
    rc, err = _run(capsys, *_distill(tiny_data, tmp_path, "--set", "kd.logit.wieght=2"))
    assert rc == 2 and "did you mean 'weight'" in err[-1]


def test_non_detection_student(capsys, tiny_data, tmp_path):
    rc, err = _run(capsys, "distill", "--teacher", "yolov8n.yaml", "--student", "yolov8n-seg.yaml",
                   "--data", str(tiny_data), "--project", str(tmp_path))  # fmt: skip
    assert rc == 2 and "yolov8n-seg.yaml: expected an Ultralytics detection model" in err[-1]


def test_unknown_export_format(capsys, distilled_run):
    rc, err = _run(capsys, "export", "--model", str(distilled_run / "weights" / "best.pt"), "--format", "onnx,ncn")
    assert rc == 2 and "unknown export format 'ncn' (did you mean 'ncnn'?); choose from: onnx, openvino" in err[-1]


def test_export_int8_without_data_and_without_model(capsys, distilled_run):
    rc, err = _run(
        capsys, "export", "--model", str(distilled_run / "weights" / "best.pt"), "--format", "ncnn-fp16,openvino-int8"
    )
    assert rc == 2 and "openvino-int8 needs calibration images: pass --data" in err[-1]
    rc, err = _run(capsys, "export", "--format", "onnx")
    assert rc == 2 and "--model is required" in err[-1]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message on machines without a GPU")
def test_export_tensorrt_without_gpu_is_a_clear_error(capsys, distilled_run, tmp_path):
    rc, err = _run(capsys, "export", "--model", str(distilled_run / "weights" / "best.pt"), "--format", "onnx,tensorrt",
                   "--out", str(tmp_path))  # fmt: skip
    assert rc == 2 and "tensorrt: TensorRT engines are built on the NVIDIA GPU" in err[-1] and "no CUDA" in err[-1]
    assert not any(tmp_path.iterdir())  # refused before any work


def test_export_list_shows_every_target_and_its_status(capsys):
    assert main(["export", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    from detkd.export import TARGETS

    assert [line.split()[0] for line in lines] == list(TARGETS)
    assert any(line.startswith("onnx ") and line.endswith("available") for line in lines)


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("distill", "train", "eval", "export", "demo"))


def test_train_kd_tool_is_the_distill_command():
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parents[1] / "tools" / "train_kd.py"
    out = subprocess.run([sys.executable, str(tool), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--teacher" in out.stdout and "--set KEY=VALUE" in out.stdout


def test_ultralytics_resume_argument_points_to_detkd_resume(capsys, tiny_data, tmp_path):
    rc, err = _run(capsys, *_distill(tiny_data, tmp_path, "--train-arg", "resume=True"))
    assert rc == 2 and "pass --resume RUN_DIR to detkd" in err[-1]
    rc, err = _run(capsys, "distill", "--resume", str(tmp_path / "nowhere"))
    assert rc == 2 and "not a detkd run folder" in err[-1]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--peer", "yolov8s.yaml"], "mutual learning (--peer) trains the peers with the student instead of a teacher"),
        (["--generations", "1", "--peer", "yolov8s.yaml"], "no --teacher-cache, --unlabeled or --peer"),
        (["--generations", "-1"], "--generations -1: must be >= 0"),
        (["--teacher", "self", "--class-map", "m.yaml"], "--teacher self is the student itself"),
    ],
)
def test_scheme_options_that_do_not_combine(capsys, tiny_data, tmp_path, extra, message):
    args = _distill(tiny_data, tmp_path, *extra)
    if "--teacher" in extra:  # replace the default teacher
        i = args.index("--teacher")
        del args[i : i + 2]
    rc, err = _run(capsys, *args)
    assert rc == 2 and len(err) >= 1 and message in err[-1] and err[-1].startswith("detkd: error: ")


def test_a_tampered_chain_record_is_one_line_naming_it(capsys, tmp_path):
    chain = tmp_path / "chain"
    chain.mkdir()
    (chain / "chain.json").write_text('{"kind": "chain", "stages": [{"name": "../escape", "model": "yolov8n.yaml"}]}')
    rc, err = _run(capsys, "distill", "--resume", str(chain))
    assert rc == 2 and err[-1] == (
        f"detkd: error: {chain / 'chain.json'}: stage name '../escape' must be a plain folder name"
    )
