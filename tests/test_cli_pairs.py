"""``key=value`` command lines as a YOLO user types them: each key reaches the option, training argument or KD
setting it names, and a mistake is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detkd.cli import build_parser, main
from detkd.cli_pairs import expand_pairs, ultralytics_defaults


def test_defaults_are_ultralytics_own() -> None:
    ul = ultralytics_defaults()
    assert {"epochs", "imgsz", "batch", "lr0"} <= set(ul)
    ns = build_parser().parse_args(["distill"])
    assert (ns.epochs, ns.imgsz, ns.batch, ns.seed) == (ul["epochs"], ul["imgsz"], ul["batch"], ul["seed"])


def test_values_containing_equals_stay_with_their_option() -> None:
    argv = ["distill", "--set", "kd.logit.weight=2", "--train-arg", "lr0=0.1", "--name=x", "epochs=2"]
    assert expand_pairs(build_parser(), argv) == [*argv[:-1], "--epochs", "2"]


def test_kd_keys_belong_to_distill(capsys) -> None:
    assert main(["train", "model=yolov8n.yaml", "kd.logit.weight=2"]) == 2
    assert "kd.logit.weight=2: KD settings apply to detkd distill, not train" in capsys.readouterr().err


def test_other_commands_are_left_alone() -> None:
    argv = ["eval", "--model", "m.pt", "--data", "d.yaml"]
    assert expand_pairs(build_parser(), argv) == argv
    assert expand_pairs(build_parser(), ["bench", "report", "x=1"]) == ["bench", "report", "x=1"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["eval", "model=m.pt", "data=d.yaml", "imgsz=320", "rect=false", "plots=true"],
         ["eval", "--model", "m.pt", "--data", "d.yaml", "--imgsz", "320", "--no-rect", "--plots"]),
        (["export", "model=m.pt", "format=onnx,ncnn", "imgsz=320", "calib_images=64"],
         ["export", "--model", "m.pt", "--format", "onnx,ncnn", "--imgsz", "320", "--calib-images", "64"]),
        (["cache", "teacher=t.pt", "data=d.yaml", "imgsz=320", "out=c"],
         ["cache", "--teacher", "t.pt", "--data", "d.yaml", "--imgsz", "320", "--out", "c"]),
    ],
)  # fmt: skip
def test_eval_export_and_cache_take_key_value(argv, expected) -> None:
    assert expand_pairs(build_parser(), argv) == expected
    build_parser().parse_args(expected)  # and argparse accepts what they became


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "model=m.pt", "imgsize=320"], "imgsize=320: not an option of detkd eval (did you mean 'imgsz'?)"),
        (["export", "model=m.pt", "lr0=0.1"], "lr0=0.1: not an option of detkd export"),
        (["eval", "model=m.pt", "rect=sometimes"], "rect=sometimes: expected rect=true or rect=false"),
    ],
)  # fmt: skip
def test_eval_and_export_refuse_keys_they_do_not_have(argv, message, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["studnet=yolov8n.yaml"], "studnet=yolov8n.yaml: not an Ultralytics training argument nor a detkd option "
                                   "(did you mean 'student'?)"),
        (["lrr0=0.1"], "(did you mean 'lr0'?)"),
        (["epochs=3", "--epochs", "4"], "epochs=3: --epochs is given too"),
        (["exist_ok=maybe"], "exist_ok=maybe: expected exist_ok=true or exist_ok=false"),
        (["project=elsewhere", "--project", "p"], "project=elsewhere: --project is given too"),
        (["resume=True"], "training argument 'resume'"),
        (["kd.logit.wieght=2"], "kd.logit: unknown key 'wieght' (did you mean 'weight'?)"),
    ],
)  # fmt: skip
def test_mistakes_are_one_line(pairs, message, tiny_data, tmp_path, capsys) -> None:
    argv = ["distill", "teacher=yolov8n.yaml", "model=yolov8n.yaml", f"data={tiny_data}", "epochs=1", "imgsz=32",
            "device=cpu", f"project={tmp_path / 'runs'}"]  # fmt: skip
    if any(p.startswith("epochs=") for p in pairs):
        argv.remove("epochs=1")
    if any(p.startswith("project=") for p in pairs):
        argv = [a for a in argv if not a.startswith("project=")]
    assert main([*argv, *pairs]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_yolo_style_command_line_distils(tiny_data: Path, tmp_path: Path, capsys) -> None:
    argv = ["distill", "teacher=yolov8n.yaml", "model=yolov8n.yaml", f"data={tiny_data}", "epochs=1", "imgsz=32",
            "batch=4", "device=cpu", "workers=0", f"project={tmp_path}", "name=kv", "lr0=0.02", "mosaic=0",
            "kd.logit.weight=2", "kd.feature.method=cwd", "allow_random_teacher=true"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((tmp_path / "kv" / "detkd_run.json").read_text())
    assert meta["student"] == "yolov8n.yaml" and meta["teacher_spec"] == "yolov8n.yaml"
    assert meta["train_args"]["lr0"] == 0.02 and meta["train_args"]["mosaic"] == 0
    assert (meta["train_args"]["epochs"], meta["train_args"]["batch"], meta["train_args"]["imgsz"]) == (1, 4, 32)
    assert meta["kd"]["logit"]["weight"] == 2 and meta["kd"]["feature"]["method"] == "cwd"
    assert meta["allow_random_teacher"] is True
    capsys.readouterr()
    best = tmp_path / "kv" / "weights" / "best.pt"
    assert main(["eval", f"model={best}", f"data={tiny_data}", "rect=false", "plots=false", "device=cpu",
                 f"project={tmp_path}", "name=ev"]) == 0  # fmt: skip
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["save_dir"] == str((tmp_path / "ev").resolve()) and "AP" in report and "mAP50-95" in report["yolo"]
    settings = json.loads((tmp_path / "ev" / "metrics.json").read_text())["settings"]
    assert settings["imgsz"] == 32 and settings["letterbox"] == "square"  # the checkpoint's size, not 640
