"""Never lose a run: kill -9 at random points and resume, atomic checkpoint writes, non-finite losses, OOM, disk."""

from __future__ import annotations

import csv
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detkd.checkpoints import load_checkpoint
from detkd.engine import checkpointing
from detkd.engine.checkpointing import CheckpointWriteError, staged_writes
from detkd.errors import DetkdError

EPOCHS = 4


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "detkd", *args]


def _distill_args(data: Path, project: Path, name: str) -> list[str]:
    # Ultralytics' default nbs (64) with batch 4: gradients accumulate over up to 16 batches, across epoch boundaries
    return ["distill", "--teacher", "yolov8s.yaml", "--student", "yolov8n.yaml", "--data", str(data),
            "--epochs", str(EPOCHS), "--imgsz", "64", "--batch", "4", "--device", "cpu", "--workers", "0",
            "--project", str(project), "--name", name, "--train-arg", "val=False"]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "YOLO_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _student_weights(run: Path) -> dict[str, torch.Tensor]:
    """Every floating tensor of the final student (the EMA Ultralytics saves): weights and BatchNorm statistics."""
    ckpt = load_checkpoint(run / "weights" / "last.pt")
    model = ckpt.get("ema") or ckpt["model"]
    return {k: v.float() for k, v in model.tensors().items() if v.is_floating_point()}


def _results(run: Path) -> list[dict[str, float]]:
    """results.csv without its wall-clock column: training and (final) validation losses and metrics per epoch."""
    rows = list(csv.DictReader((run / "results.csv").open()))
    return [{k.strip(): float(v) for k, v in r.items() if k.strip() != "time"} for r in rows]


def _epochs_logged(run: Path) -> list[int]:
    rows = list(csv.DictReader((run / "results.csv").open()))
    return [int(float(r["epoch"])) for r in rows]


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _kill_after_next_checkpoint(proc: subprocess.Popen, resume_file: Path, rng: random.Random) -> bool:
    """Wait for a new resume.pt, then kill -9 at a random moment of the next epoch; False if the run ended first."""
    before = _mtime(resume_file)
    deadline = time.time() + 240
    while proc.poll() is None and _mtime(resume_file) == before and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 1.5))
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return True


def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(tiny_data, tmp_path):
    ref = subprocess.run(_cli(*_distill_args(tiny_data, tmp_path, "ref")), env=_env(), capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr[-2000:]

    run = tmp_path / "killed"
    resume_file = run / "weights" / "resume.pt"
    rng = random.Random(7)
    kills = 0
    proc = subprocess.Popen(_cli(*_distill_args(tiny_data, tmp_path, "killed")), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    for _ in range(2):
        kills += _kill_after_next_checkpoint(proc, resume_file, rng)
        state = load_checkpoint(resume_file)  # whatever the moment of the kill, the last checkpoint is whole
        assert state["epoch"] < EPOCHS - 1 or proc.returncode == 0
        load_checkpoint(run / "weights" / "last.pt")
        if proc.returncode == 0:
            break
        proc = subprocess.Popen(_cli("distill", "--resume", str(run)), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    assert kills >= 1, "the run finished before any kill: the test did not interrupt anything"
    if proc.returncode is None or proc.returncode < 0:
        proc.wait()
    if proc.returncode != 0:  # killed last: one more resume finishes it
        done = subprocess.run(_cli("distill", "--resume", str(run)), env=_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]

    assert _epochs_logged(run) == list(range(1, EPOCHS + 1))  # no epoch lost or logged twice
    terms, ref_terms = (list(csv.DictReader((r / "kd_terms.csv").open())) for r in (run, tmp_path / "ref"))
    assert [int(r["epoch"]) for r in terms] == list(range(1, EPOCHS + 1))  # an epoch logged before a kill: replaced
    for got, want in zip(terms, ref_terms):
        assert {k: float(v) for k, v in got.items()} == pytest.approx({k: float(v) for k, v in want.items()}, rel=1e-4)
    assert not resume_file.exists() and not (run / "weights" / ".partial").exists()
    for got, want in zip(_results(run), _results(tmp_path / "ref")):  # val losses of the last epoch included
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    a, b = _student_weights(tmp_path / "ref"), _student_weights(run)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, f"resumed student differs from the uninterrupted one by {worst}"
    again = subprocess.run(_cli("distill", "--resume", str(run)), env=_env(), capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to resume" in again.stderr  # finished runs: resume is a no-op


def test_staged_write_failure_keeps_the_previous_file(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"previous")
    with pytest.raises(CheckpointWriteError, match="disk is full.*intact"), staged_writes(tmp_path, "x") as tmp:
        (tmp / "last.pt").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert (tmp_path / "last.pt").read_bytes() == b"previous"
    assert not (tmp_path / ".partial").exists()


def test_leftovers_of_a_killed_write_are_never_moved_into_place(tmp_path):
    (tmp_path / ".partial").mkdir()
    (tmp_path / ".partial" / "best.pt").write_bytes(b"torn")
    with staged_writes(tmp_path, "x", ("last.pt",)) as tmp:
        (tmp / "last.pt").write_bytes(b"new")
    assert (tmp_path / "last.pt").read_bytes() == b"new" and not (tmp_path / "best.pt").exists()


def test_disk_full_mid_run_stops_with_the_previous_checkpoint_intact(tiny_data, tmp_path, monkeypatch):
    from detkd.engine.distiller import Distiller

    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *a, **k):
        if str(f).endswith(checkpointing.RESUME_FILE):
            calls["n"] += 1
            if calls["n"] == 2:  # the second epoch's checkpoint
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    d = Distiller("yolov8s.yaml", "yolov8n.yaml", tiny_data)
    with pytest.raises(CheckpointWriteError, match="epoch-2 checkpoints.*disk is full.*intact"):
        d.train(project=tmp_path, name="kd", epochs=3, imgsz=32, batch=4, device="cpu", val=False, workers=0)
    state = load_checkpoint(tmp_path / "kd" / "weights" / "resume.pt")
    assert state["epoch"] == 0  # epoch 1's checkpoint, whole
    assert load_checkpoint(tmp_path / "kd" / "weights" / "last.pt")["epoch"] == 0


def test_unwritable_or_full_output_folder_fails_before_training(tiny_data, tmp_path, monkeypatch):
    from detkd.engine.distiller import Distiller

    d = Distiller("yolov8s.yaml", "yolov8n.yaml", tiny_data)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(DetkdError, match="output folder is not writable"):
        d.train(project=blocked, name="kd", epochs=1, imgsz=32, device="cpu")
    Usage = type("Usage", (), {"free": 10 * 2**20})
    monkeypatch.setattr(checkpointing.shutil, "disk_usage", lambda _p: Usage)
    with pytest.raises(DetkdError, match="only 10 MiB free.*need about"):
        d.train(project=tmp_path / "runs", name="kd", epochs=1, imgsz=32, device="cpu")
    assert not (tmp_path / "runs" / "kd" / "results.csv").exists()


def _poison_kd_at(monkeypatch, epoch: int, batch: int) -> None:
    """Make the logit KD term NaN at one step (0-based epoch, 1-based batch) of a run."""
    from detkd.engine.criterion import KDCriterion

    real = KDCriterion._kd

    def poisoned(self, *args):
        out = real(self, *args)
        if self.epoch == epoch and self.step == batch - 1:
            out.weighted["kd/cls"] = out.weighted["kd/cls"] * float("nan")
        return out

    monkeypatch.setattr(KDCriterion, "_kd", poisoned)


def test_non_finite_loss_stops_naming_term_epoch_batch_and_keeps_the_checkpoint(tiny_data, tmp_path, monkeypatch):
    from detkd.engine.criterion import NonFiniteLossError
    from detkd.engine.distiller import Distiller

    _poison_kd_at(monkeypatch, epoch=1, batch=2)
    d = Distiller("yolov8s.yaml", "yolov8n.yaml", tiny_data)
    with pytest.raises(NonFiniteLossError, match=r"\['kd/cls'\] at epoch 2, batch 2"):
        d.train(project=tmp_path, name="kd", epochs=3, imgsz=32, batch=4, device="cpu", val=False, workers=0)
    ckpt = load_checkpoint(tmp_path / "kd" / "weights" / "last.pt")
    assert ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["ema"].tensors().values())


def test_non_finite_loss_skip_drops_the_step_and_finishes(tiny_data, tmp_path, monkeypatch, caplog):
    from detkd.engine.distiller import Distiller

    _poison_kd_at(monkeypatch, epoch=1, batch=2)
    d = Distiller("yolov8s.yaml", "yolov8n.yaml", tiny_data)
    r = d.train(project=tmp_path, name="kd", epochs=2, imgsz=32, batch=4, device="cpu", val=False, workers=0,
                on_nonfinite="skip")  # fmt: skip
    assert "at epoch 2, batch 2: step skipped" in caplog.text
    assert "epoch 2: 1 step(s) skipped" in caplog.text
    model = load_checkpoint(r.last)["model"]
    assert all(torch.isfinite(v).all() for v in model.tensors().values())
    rows = list(csv.DictReader(r.results_csv.open()))
    assert all(float(v) == float(v) for row in rows for v in row.values())  # no NaN in the epoch means


def test_out_of_memory_says_which_setting_to_lower(tiny_data, tmp_path, monkeypatch):
    from detkd.engine import kd_trainer as trainer_mod
    from detkd.engine.distiller import Distiller

    real = trainer_mod.KDTrainer.preprocess_batch

    def oom(self, batch):  # in the second epoch: Ultralytics retries smaller batches only in the first
        if self.epoch >= 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, batch)

    monkeypatch.setattr(trainer_mod.KDTrainer, "preprocess_batch", oom)
    d = Distiller("yolov8s.yaml", "yolov8n.yaml", tiny_data)
    with pytest.raises(DetkdError, match=r"out of memory on cpu at epoch 2 \(batch 4, imgsz 32\): lower --batch "
                                         r"\(e.g. 2\) or --imgsz;.*AMP.*--resume"):  # fmt: skip
        d.train(project=tmp_path, name="kd", epochs=2, imgsz=32, batch=4, device="cpu", val=False, workers=0)


def test_resume_refuses_changes_that_would_alter_the_run(tmp_path):
    from detkd.engine.resume import resume

    with pytest.raises(DetkdError, match=r"\['epochs'\] cannot change on resume"):
        resume(tmp_path, epochs=10)
    with pytest.raises(DetkdError, match="not a detkd run folder"):
        resume(tmp_path)


def test_an_epoch_whose_every_step_is_skipped_stops_the_run(tiny_data, tmp_path, monkeypatch):
    """``skip`` mode with a KD term that is always non-finite (a weight of inf, say) would log zeros and exit 0
    having trained nothing; it stops at the end of the first such epoch instead, the previous checkpoint intact."""
    from detkd.engine.criterion import KDCriterion, NonFiniteLossError
    from detkd.engine.distiller import Distiller

    real = KDCriterion._kd

    def always_nan(self, *args):
        out = real(self, *args)
        out.weighted["kd/cls"] = out.weighted["kd/cls"] * float("nan")
        return out

    monkeypatch.setattr(KDCriterion, "_kd", always_nan)
    d = Distiller("yolov8s.yaml", "yolov8n.yaml", tiny_data)
    with pytest.raises(NonFiniteLossError, match="epoch 1: every step had a non-finite loss and was skipped"):
        d.train(project=tmp_path, name="kd", epochs=2, imgsz=32, batch=4, device="cpu", val=False, workers=0,
                on_nonfinite="skip")  # fmt: skip
