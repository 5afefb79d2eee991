"""Crash-safe checkpoints and the state a resumed run needs to continue as if it had never stopped.

Every checkpoint file is first written in full to a staging folder beside it, flushed to disk, then moved over the
old one with an atomic rename: a kill at any moment leaves either the previous file or the new one, never half of
one. A write that fails (disk full, folder gone read-only) removes its staging files and reports which checkpoint
is still intact.

``resume.pt`` (beside ``last.pt``) holds what Ultralytics' ``last.pt`` does not: the raw training weights (``last.pt``
keeps only the half-precision EMA), full-precision optimizer state, the gradients accumulated since the last optimizer
step (with ``batch`` < ``nbs`` an accumulation spans the epoch boundary), the KD adapters and method modules, the loss
balancer and every random-number stream (Python, NumPy, torch, CUDA, the training dataloader's shuffling; see
:mod:`detkd.engine.rng_state`). It holds tensors, numbers and strings only, so it loads with the restricted unpickler
like every other detkd checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from detkd.errors import DetkdError
from detkd.utils.files import replace_text

STAGING = ".partial"  # folder inside ``weights/`` where checkpoints are written before the rename
RESUME_FILE = "resume.pt"
RESUME_FORMAT = 2  # 2: with the partial gradient accumulation at the epoch boundary


class CheckpointWriteError(DetkdError):
    """A checkpoint could not be written; the previous one is intact."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_writes(folder: Path, what: str, order: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write files into a staging folder, then move each into ``folder`` with an atomic rename.

    Yields the staging folder. Files named in ``order`` are moved in that order, after any others. On an
    ``OSError`` the staged files are removed and a :class:`CheckpointWriteError` names the folder and says that the
    files already there are untouched.
    """
    staging = folder / STAGING
    if staging.is_symlink():  # never stage files in a folder elsewhere
        staging.unlink()
    shutil.rmtree(staging, ignore_errors=True)  # leftovers of a write that was killed are never moved into place
    try:
        staging.mkdir(parents=True, exist_ok=True)
        yield staging
        rank = {name: i for i, name in enumerate(order)}
        staged = sorted((p for p in staging.iterdir() if p.is_file()), key=lambda p: (rank.get(p.name, -1), p.name))
        for p in staged:
            _fsync(p)
        for p in staged:
            os.replace(p, folder / p.name)
        with contextlib.suppress(OSError):  # a directory fsync makes the renames durable (not supported everywhere)
            _fsync(folder)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        reason = "the disk is full" if e.errno == errno.ENOSPC else f"{type(e).__name__}: {e}"
        raise CheckpointWriteError(
            f"{folder}: could not write {what} ({reason}); the checkpoints already there are intact"
        ) from e
    finally:
        with contextlib.suppress(OSError):
            staging.rmdir()


_WRITTEN_SUBFOLDERS = ("weights", "data")  # what detkd and Ultralytics write into inside a run folder


def check_own_files(folder: Path) -> None:
    """Refuse a run folder (one being resumed or reused is untrusted) whose entries are symbolic links: every write
    detkd and Ultralytics make there would go through them, to files elsewhere."""
    if not folder.is_dir():
        return
    entries = list(folder.iterdir())
    for sub in _WRITTEN_SUBFOLDERS:
        d = folder / sub
        if d.is_dir() and not d.is_symlink():
            entries += list(d.iterdir())  # (not inside data/repaired: its links to your images are detkd's own)
    links = sorted(p for p in entries if p.is_symlink())
    if links:
        raise DetkdError(
            f"{links[0]}: is a symbolic link; a run folder detkd writes into must hold its own files (refusing to "
            "write through it)"
        )


def check_unfinished(folder: Path) -> None:
    """A fresh run must not overwrite a killed run's state: its ``resume.pt`` would be lost with its epochs."""
    if (folder / "weights" / RESUME_FILE).is_file():
        raise DetkdError(
            f"{folder}: holds an unfinished run (weights/{RESUME_FILE}); continue it with --resume {folder}, or "
            "choose another --name"
        )


def checkpoint_bytes(n_params: int) -> int:
    """Room a run needs: resume.pt (weights, EMA, optimizer, gradients in fp32), last.pt and best.pt (fp16), staging
    copies."""
    per_epoch = n_params * (4 * 4 + 2 * 2 * 2)
    return 2 * per_epoch + 16 * 2**20


def truncate_results_csv(csv: Path, epochs_done: int) -> None:
    """Drop ``results.csv`` rows of epochs after ``epochs_done`` (written by a run killed before its checkpoint)."""
    if not csv.is_file():
        return
    lines = csv.read_text().splitlines(keepends=True)
    if not lines:
        return
    kept = [lines[0]]
    for line in lines[1:]:
        first = line.split(",", 1)[0].strip()
        try:
            if int(float(first)) <= epochs_done:
                kept.append(line)
        except ValueError:
            continue
    if len(kept) != len(lines):
        replace_text(csv, "".join(kept))


def run_folder(path: str | Path) -> Path:
    """The run folder named by ``path``: the folder itself, its ``weights/`` folder, or a file in either."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    return folder.parent if folder.name == "weights" else folder


def find_resume_file(folder: Path) -> Path:
    """``weights/resume.pt`` of a run folder; a clear error when the run never completed an epoch."""
    path = folder / "weights" / RESUME_FILE
    if not path.is_file():
        raise DetkdError(
            f"{folder}: nothing to resume: no weights/{RESUME_FILE} (a run writes it at the end of its first "
            "epoch; a run killed earlier must be started again)"
        )
    return path
