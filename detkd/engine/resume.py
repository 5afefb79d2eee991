"""Resume: a killed ``distill`` or ``train`` run continued from its last complete epoch, in its own folder, as if it
had never stopped (the run record and ``resume.pt`` checked first: they come from a folder that may not be the
user's own)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from detkd._io import read_text
from detkd._offline import offline_call
from detkd.checkpoints import load_checkpoint
from detkd.engine.checkpointing import (
    RESUME_FORMAT,
    find_resume_file,
    run_folder,
)
from detkd.engine.distiller import Distiller, train_detector
from detkd.engine.run_folder import RUN_META, TrainResult
from detkd.engine.train_args import check_train_args
from detkd.errors import DetkdError, InputFileError
from detkd.logs import logged
from detkd.teachers.inputs import input_files
from detkd.teachers.self_teacher import SELF_TEACHER
from detkd.utils.files import fingerprints

LOGGER = logging.getLogger(__name__)


def check_same_inputs(recorded: dict[str, str], files: list[Path], folder: Path) -> None:
    """Refuse to resume when a file the run distilled from is gone or differs from the one it started with."""
    now = fingerprints(files)
    for path, digest in recorded.items():
        if path not in now:
            raise DetkdError(f"resume {folder}: {path} is gone; the run distils from it (restore it to resume)")
        if now[path] != digest:
            raise DetkdError(
                f"resume {folder}: {path} changed since the run started (SHA-256 {now[path][:12]}, was "
                f"{digest[:12]}); a resumed run must use the same teacher (start a new run for a new one)"
            )


RESUMABLE_CHANGES = ("device", "workers", "threads")  # what may differ when a run is resumed


@offline_call
@logged
def resume(path: str | Path, **changes: Any) -> TrainResult:
    """Continue a killed ``distill`` or ``train`` run from its last complete epoch, in its own folder.

    The teacher is rebuilt from its file, the student, adapters, optimizer, schedules and random streams are restored
    from ``weights/resume.pt``; the data and KD config are the run's own (``data.yaml``, ``kd.yaml``). Only
    ``device``, ``workers`` and ``threads`` may be changed. Resuming a finished run does nothing and says so.
    """
    unknown = sorted(set(changes) - set(RESUMABLE_CHANGES))
    if unknown:
        raise DetkdError(f"resume: {unknown} cannot change on resume (only {', '.join(RESUMABLE_CHANGES)} can)")
    folder = run_folder(path)
    meta = run_meta(folder, path)
    if meta.get("finished"):
        LOGGER.info("%s: the run finished all its epochs; nothing to resume", folder)
        return finished_result(folder)
    peers = meta.get("peers") or []
    if meta["kind"] == "distill":  # a replaced teacher is refused before anything else is read
        cache = meta.get("teacher_cache")
        files = [Path(cache) / "cache.json"] if cache else input_files(meta["teacher_spec"], meta.get("class_map"))
        if peers:
            files = [Path(p) for p in peers if str(p).endswith(".pt")]
        check_same_inputs(meta.get("inputs") or {}, files, folder)
    state = resume_state(find_resume_file(folder))
    if int(state["epoch"]) + 1 >= int(state["epochs"]):
        LOGGER.info("%s: all %d epochs were trained; nothing to resume", folder, state["epochs"])
        return finished_result(folder)
    args = {**meta["train_args"], **{k: v for k, v in changes.items() if k != "threads" and v is not None}}
    threads = changes.get("threads") or meta.get("threads")
    where: dict[str, Any] = {"project": folder.parent, "name": folder.name, "threads": threads, "resume_state": state}
    data = folder / "data.yaml"
    LOGGER.info("resuming %s run %s after epoch %d", meta.get("kind"), folder, int(state["epoch"]) + 1)
    if meta.get("kind") == "distill":
        teacher = meta["teacher_spec"]
        cache = meta.get("teacher_cache")
        if peers:
            distiller = Distiller(None, meta["student"], data, folder / "kd.yaml", peers=peers)
            return distiller.train(on_nonfinite=meta.get("on_nonfinite", "stop"), **where, **args)
        if cache:
            distiller = Distiller(None, meta["student"], data, folder / "kd.yaml", teacher_cache=cache)
            return distiller.train(on_nonfinite=meta.get("on_nonfinite", "stop"), **where, **args)
        builtin = str(teacher).endswith((".yaml", ".yml")) or ":" in str(teacher) or str(teacher) == SELF_TEACHER
        if not builtin and not Path(teacher).exists():
            raise DetkdError(f"resume: the teacher {teacher} is gone (detkd rebuilds the teacher from its file)")
        distiller = Distiller(teacher, meta["student"], data, folder / "kd.yaml", class_map=meta.get("class_map"),
                              allow_random_teacher=meta.get("allow_random_teacher") is True)  # fmt: skip
        return distiller.train(on_nonfinite=meta.get("on_nonfinite", "stop"), **where, **args)
    return train_detector(meta["model"], data, **where, **args)


_META_KEYS = {"train": ("model",), "distill": ("teacher_spec", "student")}  # strings a run's meta must name


def run_meta(folder: Path, given: str | Path) -> dict[str, Any]:
    """A run folder's ``detkd_run.json``, checked: it comes from a folder that may not be the user's own."""
    meta_path = folder / RUN_META
    if not meta_path.is_file():
        raise DetkdError(f"{given}: not a detkd run folder ({RUN_META} missing)")
    try:
        meta = json.loads(read_text(meta_path, "run description", max_bytes=1 << 22))
    except ValueError as e:
        raise InputFileError(meta_path, f"is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("kind") not in _META_KEYS:
        raise InputFileError(meta_path, "is not a detkd run description (expected 'kind': train or distill)")
    for key in _META_KEYS[meta["kind"]]:
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise InputFileError(meta_path, f"'{key}' must name a file or model (got {meta.get(key)!r})")
    for key in ("class_map", "on_nonfinite", "teacher_cache"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise InputFileError(meta_path, f"'{key}' must be a string (got {meta[key]!r})")
    peers = meta.get("peers")
    if peers is not None and (not isinstance(peers, list) or not all(isinstance(p, str) and p for p in peers)):
        raise InputFileError(meta_path, f"'peers' must be a list of model files (got {peers!r})")
    train_args = meta.get("train_args", {})
    if not isinstance(train_args, dict):
        raise InputFileError(meta_path, f"'train_args' must be a mapping (got {type(train_args).__name__})")
    threads = meta.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)):
        raise InputFileError(meta_path, f"'threads' must be an integer (got {threads!r})")
    try:
        check_train_args(train_args)
    except DetkdError as e:
        raise InputFileError(meta_path, f"train_args: {e}") from e
    return {**meta, "train_args": train_args}


def resume_state(path: Path) -> dict[str, Any]:
    """``resume.pt``, loaded safely and checked to hold what a resume reads (the rest is checked as it is restored)."""
    state = load_checkpoint(path)
    if state.get("format") not in (1, RESUME_FORMAT):
        raise InputFileError(path, f"is not a detkd resume state (format {state.get('format')!r})")
    ints = {k: state.get(k) for k in ("epoch", "epochs", "updates")}
    if any(isinstance(v, bool) or not isinstance(v, int) for v in ints.values()):
        raise InputFileError(path, f"epoch, epochs and updates must be integers (got {ints})")
    if not -1 <= int(state["epoch"]) < int(state["epochs"]):
        raise InputFileError(path, f"epoch {state['epoch']} is outside the run's {state['epochs']} epochs")
    for key in ("model", "ema", "optimizer", "rng", "stopper"):
        if not isinstance(state.get(key), dict):
            raise InputFileError(path, f"'{key}' must be a mapping (got {type(state.get(key)).__name__})")
    for key in ("model", "ema"):
        if not all(isinstance(v, torch.Tensor) for v in state[key].values()):
            raise InputFileError(path, f"'{key}' must hold tensors only (a state dict)")
    if state["format"] == 1:
        LOGGER.warning("%s: written by an older detkd without the partial gradient accumulation: the resumed run "
                       "continues statistically, not exactly, like the uninterrupted one", path)  # fmt: skip
    return state


def finished_result(folder: Path) -> TrainResult:
    wdir = folder / "weights"
    return TrainResult(folder, wdir / "best.pt", wdir / "last.pt", folder / "results.csv", 0.0)
