"""Distillation schemes end to end on tiny data: self-distillation (the student's EMA teaches), born-again generations,
teacher-assistant chains, online mutual learning; each resumed after a kill -9 equals the uninterrupted run."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detkd.checkpoints import load_checkpoint
from detkd.engine.distiller import Distiller
from detkd.engine.schemes import distill_chain, plan_stages
from detkd.errors import DetkdError
from detkd.students import ultralytics_yolo as uy
from detkd.teachers.self_teacher import batch_statistics
from tests.engine.test_resume import _env, _kill_after_next_checkpoint, _student_weights

TINY = {"epochs": 1, "imgsz": 32, "batch": 4, "device": "cpu", "val": False, "plots": False, "workers": 0,
        "fraction": 0.67}  # fmt: skip


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "detkd", *args]


@pytest.mark.slow
def test_self_teacher_is_the_students_ema_at_every_step(tiny_data, tmp_path):
    d = Distiller("self", "yolov8n.yaml", tiny_data)
    seen = []

    def check(trainer):  # the teacher's outputs are those of Ultralytics' EMA of this step, not the student's
        images = torch.rand(2, 3, 32, 32)
        ema, student = trainer.ema.ema, trainer.model
        before = {k: v.clone() for k, v in ema.state_dict().items()}
        with torch.no_grad(), batch_statistics(ema):  # batch statistics, as the training student normalises
            want = uy.head_outputs(uy.split_branches(ema(images))["one2many"], uy.detect_head(ema)).cls_logits
        assert all(torch.equal(before[k], v) for k, v in ema.state_dict().items())  # the EMA is left as it was
        got = trainer.teacher(images).heads["one2many"].cls_logits
        source = trainer.teacher._source_model()
        seen.append(
            (torch.allclose(got, want, atol=1e-6), source is ema and source is not student, trainer.ema.updates)
        )

    d.add_callback("on_train_batch_end", check)
    res = d.train(project=tmp_path, name="self", **{**TINY, "epochs": 2})
    assert res.best.is_file() and len(seen) >= 2
    assert all(same for same, _, _ in seen) and seen[-1][2] > 0
    assert all(is_ema for _, is_ema, _ in seen), "the teacher ran another model than Ultralytics' EMA"
    terms = (res.save_dir / "kd_terms.csv").read_text().splitlines()
    assert len(terms) == 3
    meta = json.loads((res.save_dir / "detkd_run.json").read_text())
    assert meta["teacher_spec"] == "self" and "EMA" in meta["teacher"]


def test_self_teacher_takes_no_class_map(tiny_data, tmp_path):
    cmap = tmp_path / "map.yaml"
    cmap.write_text("map: {}\n")
    with pytest.raises(DetkdError, match="--teacher self is the student itself"):
        Distiller("self", "yolov8n.yaml", tiny_data, class_map=cmap)


def test_chain_plans_and_refuses_what_it_cannot_do(tiny_data, tmp_path):
    assert [s.role for s in plan_stages("n.yaml", ["s.yaml"], 1)] == ["assistant", "generation", "generation"]
    with pytest.raises(DetkdError, match="--assistant MODEL"):
        distill_chain("t.pt", "yolov8n.yaml", tiny_data, project=tmp_path)
    with pytest.raises(DetkdError, match="--assistant needs a --teacher"):
        distill_chain(None, "yolov8n.yaml", tiny_data, assistants=["yolov8s.yaml"], project=tmp_path)
    with pytest.raises(DetkdError, match="does not combine"):
        distill_chain("self", "yolov8n.yaml", tiny_data, generations=1, project=tmp_path)


@pytest.mark.slow
def test_teacher_assistant_chain_distils_each_stage_from_the_previous(tiny_data, tmp_path):
    res = distill_chain("yolov8m.yaml", "yolov8n.yaml", tiny_data, assistants=["yolov8s.yaml"],
                        allow_random_teacher=True, overrides=["logit.weight=2"], project=tmp_path, name="ta",
                        **TINY)  # fmt: skip
    record = json.loads((res.save_dir / "chain.json").read_text())
    names = [s["name"] for s in record["stages"]]
    assert names == ["1-assistant-yolov8s", "2-student-yolov8n"] and record["finished"]
    first, second = (json.loads((res.save_dir / n / "detkd_run.json").read_text()) for n in names)
    assert first["teacher_spec"] == "yolov8m.yaml" and first["allow_random_teacher"] is True
    assert second["teacher_spec"] == record["stages"][0]["weights"]  # the assistant's trained weights
    assert second["kd"]["logit"]["weight"] == 2.0 and second["student"] == "yolov8n.yaml"
    assert res.best == Path(record["stages"][1]["weights"]) and res.best.is_file()
    assert all(s["wall_time_s"] > 0 for s in record["stages"])


@pytest.mark.slow
def test_generations_start_from_the_labels_without_a_teacher(tiny_data, tmp_path, capsys):
    from detkd.cli import main

    args = ["distill", "--student", "yolov8n.yaml", "--data", str(tiny_data), "--generations", "1", "--epochs",
            "1", "--imgsz", "32", "--batch", "4", "--device", "cpu", "--project", str(tmp_path), "--name", "gens",
            "--train-arg", "val=False", "--train-arg", "plots=False", "--train-arg", "fraction=0.67"]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [s["name"] for s in out["stages"]] == ["gen0-yolov8n", "gen1-yolov8n"]
    gen0, gen1 = (tmp_path / "gens" / n / "detkd_run.json" for n in ("gen0-yolov8n", "gen1-yolov8n"))
    assert json.loads(gen0.read_text())["kind"] == "train"  # labels alone
    g1 = json.loads(gen1.read_text())
    assert g1["kind"] == "distill" and g1["teacher_spec"].endswith("gen0-yolov8n/weights/last.pt")


@pytest.mark.slow
def test_mutual_learning_trains_every_peer_and_saves_the_best(tiny_data, tmp_path):
    d = Distiller(None, "yolov8n.yaml", tiny_data, peers=["yolov8s.yaml"])
    peer = d.peers[0]
    before = {k: v.clone() for k, v in peer.model.state_dict().items() if v.is_floating_point()}
    res = d.train(project=tmp_path, name="dml", **{**TINY, "epochs": 2})
    after = d.peers[0].model.state_dict()
    moved = sum(float((after[k] - v.to(after[k].device)).abs().sum()) for k, v in before.items())
    assert moved > 0, "the peer did not learn"
    assert d.peers[0].model is not peer.model  # train() rebuilt the group from the seed, as it does the student
    meta = json.loads((res.save_dir / "detkd_run.json").read_text())
    group = meta["mutual"]
    assert [m["name"] for m in group["models"]] == ["student", "1-yolov8s"] and group["best"] in (
        "student",
        "1-yolov8s",
    )
    peer_ckpt = res.save_dir / "weights" / "peers" / "1-yolov8s.pt"
    from detkd.students.ultralytics_yolo import count_parameters, load_detection_model

    loaded = load_detection_model(peer_ckpt)  # a normal checkpoint: eval, export and student start take it
    assert count_parameters(loaded) > 10e6 and (res.save_dir / "weights" / "best_peer.pt").is_file()
    header = (res.save_dir / "kd_terms.csv").read_text().splitlines()[0]
    assert "peer/1-yolov8s/loss" in header
    assert meta["peers"] == ["yolov8s.yaml"] and meta["teacher_spec"] == "mutual"


def test_mutual_learning_refuses_a_teacher_too(tiny_data):
    with pytest.raises(DetkdError, match="instead of a teacher"):
        Distiller("yolov8s.yaml", "yolov8n.yaml", tiny_data, peers=["yolov8s.yaml"], allow_random_teacher=True)


# ---- kill -9 and resume: the continued run is the uninterrupted one --------------------------------------------

EPOCHS = 3
COMMON = ["--student", "yolov8n.yaml", "--epochs", str(EPOCHS), "--imgsz", "32", "--batch", "4", "--device", "cpu",
          "--workers", "0", "--train-arg", "val=False", "--train-arg", "plots=False"]  # fmt: skip
SCHEMES = {
    "self": (["--teacher", "self"], "weights"),
    "mutual": (["--peer", "yolov8s.yaml"], "weights"),
    "generations": (["--generations", "1"], "gen1-yolov8n/weights"),
}


@pytest.mark.slow
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_kill_9_then_resume_equals_the_uninterrupted_run(scheme, tiny_data, tmp_path):
    extra, wdir = SCHEMES[scheme]
    args = lambda name: ["distill", *extra, *COMMON, "--data", str(tiny_data), "--project", str(tmp_path),  # noqa: E731
                         "--name", name]  # fmt: skip
    ref = subprocess.run(_cli(*args("ref")), env=_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*args("killed")), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _kill_after_next_checkpoint(proc, run / wdir / "resume.pt", random.Random(3)), "finished before the kill"
    load_checkpoint(run / wdir / "resume.pt")
    done = subprocess.run(_cli("distill", "--resume", str(run)), env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    final = Path(wdir).parent
    a, b = _student_weights(tmp_path / "ref" / final), _student_weights(run / final)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, f"{scheme}: the resumed student differs from the uninterrupted one by {worst}"
    if scheme == "mutual":  # and so does every peer
        pa, pb = (
            load_checkpoint(r / "weights" / "peers" / "1-yolov8s.pt")["ema"].tensors() for r in (tmp_path / "ref", run)
        )
        worst = max(float((pa[k].float() - pb[k].float()).abs().max()) for k in pa if pa[k].is_floating_point())
        assert worst < 1e-6, f"the resumed peer differs by {worst}"


@pytest.mark.slow
def test_three_models_learn_from_the_other_two_fused(tiny_data, tmp_path):
    d = Distiller(None, "yolov8n.yaml", tiny_data, peers=["yolov8n.yaml", "yolov8s.yaml"])
    assert d.composite.box_method == "iou"  # the fused others give decoded distances (no DFL bins)
    assert [p.name for p in d.peers] == ["1-yolov8n", "2-yolov8s"]
    res = d.train(project=tmp_path, name="dml3", **TINY)
    header = (res.save_dir / "kd_terms.csv").read_text().splitlines()[0]
    assert "peer/1-yolov8n/loss" in header and "peer/2-yolov8s/loss" in header
    models = json.loads((res.save_dir / "detkd_run.json").read_text())["mutual"]["models"]
    assert [m["name"] for m in models] == ["student", "1-yolov8n", "2-yolov8s"]


def test_combine_fuses_the_others_and_keeps_the_first_ones_features():
    from detkd.engine.mutual import combine
    from detkd.types import FeatureSpec, HeadOutputs, TeacherOutputs

    def out(p: float, d: float, feat: float) -> TeacherOutputs:
        head = HeadOutputs(torch.logit(torch.full((1, 1, 2), p)), torch.full((1, 4, 2), d), 1, torch.zeros(2, 2),
                           torch.ones(2, 1))  # fmt: skip
        return TeacherOutputs([torch.full((1, 2, 1, 2), feat)], [FeatureSpec(2, 8)], {"one2many": head})

    one = out(0.8, 1.0, 5.0)
    assert combine([one]) is one
    fused = combine([one, out(0.2, 3.0, 7.0)])
    assert torch.allclose(fused.heads["one2many"].cls_logits.sigmoid(), torch.full((1, 1, 2), 0.5))
    assert torch.allclose(fused.heads["one2many"].box_raw, torch.full((1, 4, 2), 2.0))
    assert fused.features[0].max() == 5.0 and fused.heads["one2many"].reg_max == 1
