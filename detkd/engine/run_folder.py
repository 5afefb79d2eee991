"""A run's folder: created, checked and locked before anything trains (one process per folder), its run record
(``detkd_run.json``) and resolved data written, removed again when a start fails before it saved anything."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detkd.data.dataset import DataSpec
from detkd.engine import distributed
from detkd.engine.checkpointing import (
    check_own_files,
    check_unfinished,
    checkpoint_bytes,
)
from detkd.engine.runlock import RunLock
from detkd.errors import DetkdError, RunInterrupted
from detkd.utils.files import check_free_space, check_writable, replace_text

LOGGER = logging.getLogger(__name__)


RUN_META = "detkd_run.json"


@dataclass
class TrainResult:
    """Where a run's outputs are and what it measured."""

    save_dir: Path
    best: Path
    last: Path
    results_csv: Path
    wall_time_s: float
    metrics: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def prepared_run_folder(
    project: str | Path, name: str, exist_ok: bool, device: Any = None, *, resuming: bool = False
) -> Iterator[Path]:
    """The run folder, created, checked writable and locked (:mod:`detkd.engine.runlock`) before anything trains,
    held until the run ends; under torchrun, rank 0 holds it and every rank gets its path. A folder that exists
    already must hold its own files (no links); a fresh run may not take over a killed run's folder."""
    from ultralytics.utils.files import increment_path

    if not name or name in (".", "..") or Path(name).is_absolute() or ".." in Path(name).parts:
        raise DetkdError(f"--name {name!r}: must name a folder inside --project (no '..', not absolute, not empty)")
    distributed.init(device)
    save_dir, lock, created, failed = None, None, False, True
    if distributed.is_main():
        save_dir = Path(increment_path(Path(project).resolve() / name, exist_ok=exist_ok or resuming))
        check_own_files(save_dir)
        created = not save_dir.exists()
        check_writable(save_dir)
        lock = RunLock(save_dir).acquire()
    try:
        if save_dir is not None and not resuming:
            check_unfinished(save_dir)  # (under the lock: a run in progress is reported as busy first)
        folder = Path(distributed.broadcast(save_dir))
        try:
            yield folder
        except KeyboardInterrupt:
            raise RunInterrupted(folder) from None
        failed = False
    finally:
        if lock is not None:
            lock.release()
        if failed and created and save_dir is not None:
            remove_if_nothing_saved(save_dir)


def remove_if_nothing_saved(save_dir: Path) -> None:
    """A run that failed before its first checkpoint leaves no numbered folder behind (``distill-2``,
    ``distill-3``, ... of failed starts would hide the run that worked); only a folder this run created, and only
    when it holds no weights."""
    weights = save_dir / "weights"
    if weights.is_dir() and any(weights.iterdir()):
        return
    shutil.rmtree(save_dir, ignore_errors=True)
    LOGGER.info("%s: removed (the run stopped before it saved anything)", save_dir)


def check_room(save_dir: Path, model: torch.nn.Module) -> None:
    if distributed.is_main():
        check_free_space(save_dir, checkpoint_bytes(sum(p.numel() for p in model.parameters())))


def write_meta(save_dir: Path, meta: dict[str, Any]) -> None:
    if distributed.is_main():
        replace_text(save_dir / RUN_META, json.dumps(meta, indent=2, default=str))


def write_data(spec: DataSpec, save_dir: Path, resuming: bool) -> Path:
    """The run's resolved data YAML (and image lists of changed splits), written by rank 0; a resumed run trains on
    the one it wrote first (its ``data/report.json`` keeps what the original check found).

    On several nodes without a shared filesystem, the first rank of each node that does not see rank 0's file
    writes the node's own copy (every rank checked the same data, so the copies agree).
    """
    path = save_dir / "data.yaml"
    spec.plan_resolved(path)  # every rank knows the listed path of each sample, whoever writes the lists
    if distributed.is_main() and not (resuming and path.is_file()):
        spec.write_resolved(path)
    distributed.barrier()
    if not distributed.is_main() and distributed.is_local_main() and not path.is_file():
        spec.write_resolved(path)
    distributed.barrier()
    return path


def data_footnote(spec: DataSpec, save_dir: Path) -> None:
    """Repeat, once training is over, how many samples were left out or repaired (the warnings scrolled away)."""
    counts = {split: (len(r.skipped), len(r.repaired)) for split, r in spec.reports.items()}
    if distributed.is_main() and any(a or b for a, b in counts.values()):
        text = "; ".join(f"{split}: {a} skipped, {b} repaired" for split, (a, b) in counts.items())
        LOGGER.warning("data: %s (details: %s)", text, save_dir / "data" / "report.json")
