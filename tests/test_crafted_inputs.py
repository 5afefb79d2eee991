"""Crafted or damaged inputs found by a red-team pass: each is one line naming the file, nothing runs, nothing of the
user's is written. (Checkpoints with odd structure, legacy checkpoints with odd heads, model YAMLs that would hand
the builder's own objects to a layer, run folders with links or damaged state, odd options.)"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from detkd.cli import main
from detkd.errors import DetkdError
from detkd.teachers import load_eval_model


def _tiny_model() -> Any:
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    return DetectionModel({**yaml_model_load("yolov8n.yaml"), "nc": 2}, nc=2, verbose=False)


def _cycle(m: Any) -> None:
    m.model._modules["0"] = m  # a module that contains itself


def _sparse(m: Any) -> None:
    m.model[0].conv.weight = torch.nn.Parameter(m.model[0].conv.weight.detach().to_sparse())


def _nan(m: Any) -> None:
    with torch.no_grad():
        m.model[0].conv.weight[0, 0, 0, 0] = float("nan")


CRAFTS: dict[str, tuple[Callable[[Any], None], str]] = {
    "modules-as-list": (lambda m: m.__dict__.update(_modules=list(m._modules.values())), "is a list, not a mapping"),
    "parameters-as-list": (lambda m: m.model[0].conv.__dict__.update(_parameters=[1, 2]), "not a mapping"),
    "child-is-its-parent": (_cycle, "contains itself"),
    "non-persistent-set-is-a-number": (
        lambda m: m.__dict__.update(_non_persistent_buffers_set=5),
        "not a set of names",
    ),
    "sparse-weight": (_sparse, "not a dense real tensor"),
    "nan-weight": (_nan, "hold NaN or Inf"),
}


@pytest.mark.parametrize("craft", sorted(CRAFTS))
def test_a_checkpoint_with_odd_structure_is_one_line(craft: str, tmp_path: Path):
    change, message = CRAFTS[craft]
    model = _tiny_model()
    change(model)
    path = tmp_path / "odd.pt"
    torch.save({"model": model, "ema": None}, path)
    with pytest.raises(DetkdError, match=message) as e:
        load_eval_model(path)
    assert "odd.pt" in str(e.value)


LEGACY_CRAFTS: dict[str, tuple[Callable[[Any, dict], None], str]] = {
    "names-a-string": (lambda m, cfg: setattr(m, "names", "abc"), "class names"),
    "names-not-indices": (lambda m, cfg: setattr(m, "names", {"x": "a"}), "must map indices to names"),
    "detect-from-an-int": (lambda m, cfg: cfg["head"][-1].__setitem__(0, -1), "Detect head is inconsistent"),
    "empty-head": (lambda m, cfg: cfg.__setitem__("head", []), "empty backbone or head"),
    "anchors-of-one-dimension": (lambda m, cfg: m.model[-1].register_buffer("anchors", torch.ones(3)), "inconsistent"),
    "conv-with-nine-args": (
        lambda m, cfg: cfg["backbone"][0].__setitem__(3, [16, 6, 2, 2, 1, 1, 1, 1, 1]),
        "does not rebuild|do not match",
    ),
}


@pytest.mark.parametrize("craft", sorted(LEGACY_CRAFTS))
def test_a_legacy_checkpoint_with_an_odd_head_is_one_line(craft: str, tmp_path: Path):
    from tests.teachers.legacy_factory import build_legacy_model, save_legacy_checkpoint

    model, _ = build_legacy_model(nc=3)
    cfg = copy.deepcopy(model.yaml)
    change, message = LEGACY_CRAFTS[craft]
    change(model, cfg)
    model.yaml = cfg
    path = save_legacy_checkpoint(tmp_path / "legacy.pt", model)
    with pytest.raises(DetkdError, match=message) as e:
        load_eval_model(path)
    assert "legacy.pt" in str(e.value) and len(str(e.value).splitlines()) == 1


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ([-1, 1, "Conv", ["max_channels", 3, 2]], "would hand the builder's own 'max_channels' object to the layer"),
        ([-1, 1, "Conv", ["d", 3, 2]], "would hand the builder's own 'd' object"),
        ([-1, 1, "nn.MultiheadAttention", [16, 3]], "model architecture does not build"),
    ],
)
def test_model_yaml_arguments_are_data_not_the_builders_objects(layer, message, tiny_data, tmp_path, capsys):
    import yaml

    cfg = {"nc": 2, "backbone": [layer, [-1, 1, "Conv", [32, 3, 2]]], "head": [[[1], 1, "Detect", ["nc"]]]}
    path = tmp_path / "odd-model.yaml"
    path.write_text(yaml.safe_dump(cfg))
    argv = ["train", "--model", str(path), "--data", str(tiny_data), "--epochs", "1", "--imgsz", "32",
            "--device", "cpu", "--project", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "odd-model.yaml" in err[-1] and message in err[-1] and "Traceback" not in "\n".join(err)


# --- run folders ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def killed_run(tiny_data, tmp_path_factory) -> Path:
    """A real run killed after its first epoch of two (a NaN in epoch 2 stops it; resume.pt of epoch 1 stays)."""
    from detkd.engine.criterion import KDCriterion, NonFiniteLossError
    from detkd.engine.distiller import Distiller

    real = KDCriterion._kd

    def poisoned(self, *args):
        out = real(self, *args)
        if self.epoch == 1:
            out.weighted["kd/cls"] = out.weighted["kd/cls"] * float("nan")
        return out

    project = tmp_path_factory.mktemp("killed")
    KDCriterion._kd = poisoned  # type: ignore[method-assign]
    try:
        with pytest.raises(NonFiniteLossError):
            Distiller("yolov8n.yaml", "yolov8n.yaml", tiny_data).train(
                project=project, name="kd", epochs=2, imgsz=32, batch=4, device="cpu", val=False, workers=0
            )
    finally:
        KDCriterion._kd = real  # type: ignore[method-assign]
    assert (project / "kd" / "weights" / "resume.pt").is_file()
    return project / "kd"


def _copy_run(run: Path, tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "run"
    shutil.copytree(run, dest, symlinks=True)
    (dest / ".detkd.lock").unlink(missing_ok=True)
    return dest


META_EDITS: dict[str, tuple[Callable[[dict], Any], str]] = {
    "not-json": (lambda m: "{not json", "is not valid JSON"),
    "a-list": (lambda m: [1, 2], "is not a detkd run description"),
    "distill-without-teacher": (lambda m: {k: v for k, v in m.items() if k != "teacher_spec"}, "'teacher_spec' must"),
    "train-args-a-list": (lambda m: {**m, "train_args": [1]}, "'train_args' must be a mapping"),
    "train-args-project": (lambda m: {**m, "train_args": {**m["train_args"], "project": "x"}}, "set by detkd"),
}


@pytest.mark.parametrize("edit", sorted(META_EDITS))
def test_resuming_a_damaged_run_description_is_one_line(edit, killed_run, tmp_path, capsys):
    run = _copy_run(killed_run, tmp_path)
    change, message = META_EDITS[edit]
    edited = change(json.loads((run / "detkd_run.json").read_text()))
    (run / "detkd_run.json").write_text(edited if isinstance(edited, str) else json.dumps(edited))
    assert main(["distill", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


STATE_EDITS: dict[str, tuple[Callable[[dict], dict], str]] = {
    "epoch-a-string": (lambda s: {**s, "epoch": "x"}, "must be integers"),
    "no-model": (lambda s: {k: v for k, v in s.items() if k != "model"}, "'model' must be a mapping"),
    "empty-rng": (lambda s: {**s, "rng": {}}, "resume.pt: does not fit this run"),
    "grads-of-another-shape": (lambda s: {**s, "grads": [torch.zeros(3)] * len(s["grads"])}, "saved gradients"),
    "stopper-patience-a-string": (lambda s: {**s, "stopper": {**s["stopper"], "patience": "x"}}, "does not fit"),
}


@pytest.mark.parametrize("edit", sorted(STATE_EDITS))
def test_resuming_a_damaged_resume_state_is_one_line(edit, killed_run, tmp_path, capsys):
    from detkd.checkpoints import load_checkpoint

    run = _copy_run(killed_run, tmp_path)
    path = run / "weights" / "resume.pt"
    change, message = STATE_EDITS[edit]
    torch.save(change(load_checkpoint(path)), path)
    assert main(["distill", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


@pytest.mark.parametrize("entry", [".detkd.lock", "detkd_run.json", "weights"])
def test_a_run_folder_with_links_is_refused_and_the_link_targets_are_untouched(entry, killed_run, tmp_path, capsys):
    run = _copy_run(killed_run, tmp_path)
    precious = tmp_path / ("precious" if entry != "weights" else "precious_folder")
    if entry == "weights":
        os.rename(run / "weights", precious)
    else:
        precious.write_text("the user's own file\n")
        (run / entry).unlink(missing_ok=True)
        if entry == "detkd_run.json":
            precious.write_text((killed_run / "detkd_run.json").read_text())
    os.symlink(precious, run / entry)
    before = {p: p.read_bytes() for p in ([precious] if precious.is_file() else precious.rglob("*")) if p.is_file()}
    assert main(["distill", "--resume", str(run)]) == 2
    assert "is a symbolic link; a run folder detkd writes into must hold its own files" in capsys.readouterr().err
    after = {p: p.read_bytes() for p in ([precious] if precious.is_file() else precious.rglob("*")) if p.is_file()}
    assert after == before


def test_a_fresh_run_does_not_take_over_a_killed_runs_folder(killed_run, tiny_data, tmp_path, capsys):
    run = _copy_run(killed_run, tmp_path)
    argv = ["distill", "--teacher", "yolov8n.yaml", "--student", "yolov8n.yaml", "--data", str(tiny_data),
            "--epochs", "1", "--imgsz", "32", "--device", "cpu", "--project", str(tmp_path), "--name", "run",
            "--exist-ok"]  # fmt: skip
    before = (run / "weights" / "resume.pt").read_bytes()
    assert main(argv) == 2
    assert "holds an unfinished run (weights/resume.pt); continue it with --resume" in capsys.readouterr().err
    assert (run / "weights" / "resume.pt").read_bytes() == before


# --- odd values -------------------------------------------------------------------------------------------------------


def test_odd_values_found_by_the_red_team_are_one_line(tiny_data, trained_student, tmp_path, capsys):
    best = str(trained_student / "weights" / "best.pt")
    ens = tmp_path / "ens.yaml"
    ens.write_text("ensemble:\n  members:\n    - {teacher: yolov8n.yaml, class_map: 5}\n")
    chan = tmp_path / "channels.yaml"
    chan.write_text(tiny_data.read_text() + "channels: 1\n")
    common = ["--data", str(tiny_data), "--epochs", "1", "--imgsz", "32", "--device", "cpu", "--project",
              str(tmp_path / "runs")]  # fmt: skip
    cases = [
        (["distill", "--teacher", str(ens), "--student", "yolov8n.yaml", *common], "'class_map' must be paths"),
        (["train", "--model", "yolov8n.yaml", *common, "--seed", "99999999999999999999"], "--seed 9"),
        (["train", "--model", "yolov8n.yaml", *common, "--name", ""], "--name '': must name a folder"),
        (["train", "--model", "yolov8n.yaml", *common, "--threads", "100000"], "--threads 100000: this machine has"),
        (["train", "--model", "yolov8n.yaml", *common, "--train-arg", "pretrained=x.pt"], "set by detkd"),
        (["train", "--model", "yolov8n.yaml", "--data", str(chan), "--device", "cpu"], "'channels: 1'"),
        (["eval", "--model", best, "--data", str(tiny_data), "--out", "/dev/null"], "/dev/null: output folder is"),
        (["eval", "--model", best, "--data", str(tiny_data), "--imgsz", "99999999"], "--imgsz 99999999: at most"),
        (["export", "--model", best, "--imgsz", "0", "--out", str(tmp_path / "x")], "--imgsz 0: must be"),
        (["export", "--model", best, "--budget", "-1", "--out", str(tmp_path / "x")], "--budget -1: must be"),
        (["export", "--model", best, "--budget", "nan", "--out", str(tmp_path / "x")], "--budget nan: must be"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and "Traceback" not in "\n".join(err), (argv, err[-3:])
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x").exists()


def test_an_image_list_entry_too_long_for_the_filesystem_is_skipped(tmp_path):
    from detkd.data.checks import validate_split
    from detkd.data.dataset import load_data_spec
    from tests.data.test_bad_input import _dataset

    yaml_path = _dataset(tmp_path / "ds")
    good = sorted((tmp_path / "ds" / "images" / "train").iterdir())
    (tmp_path / "ds" / "train.txt").write_text("\n".join([*map(str, good), "/" + "x" * 300 + ".png"]) + "\n")
    yaml_path.write_text("train: train.txt\nval: images/val\nnames: [a, b]\n")
    report = validate_split(load_data_spec(yaml_path), "train")
    assert report.images == 3 and "image path cannot be read" in report.skipped[0].problem
