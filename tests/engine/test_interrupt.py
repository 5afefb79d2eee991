"""Ctrl-C during a run says how to resume it (or that there is nothing to resume yet)."""

from __future__ import annotations

from pathlib import Path

import pytest

from detkd.cli import _interrupted
from detkd.engine.run_folder import prepared_run_folder as _run_folder
from detkd.errors import RunInterrupted


def test_ctrl_c_inside_a_run_names_its_folder_and_releases_the_lock(tmp_path: Path) -> None:
    with pytest.raises(RunInterrupted) as e, _run_folder(tmp_path, "run", exist_ok=False) as folder:
        raise KeyboardInterrupt
    assert e.value.folder == folder == (tmp_path / "run").resolve()
    assert _interrupted("distill", e.value).endswith(f"nothing was saved in {folder} (start the run again)")
    assert not folder.exists()  # a start that saved nothing leaves no folder behind
    (folder / "weights").mkdir(parents=True)
    (folder / "weights" / "resume.pt").write_bytes(b"x")
    assert _interrupted("distill", e.value) == (
        f"interrupted; continue from the last complete epoch with: detkd distill --resume {folder}"
    )
    with _run_folder(tmp_path, "run", exist_ok=False, resuming=True):  # the lock was released
        pass


def test_ctrl_c_outside_a_run_is_plain() -> None:
    assert _interrupted("eval", KeyboardInterrupt()) == "interrupted"


def test_a_failed_start_leaves_no_numbered_folder_but_a_saved_run_stays(tmp_path: Path) -> None:
    for _ in range(2):
        with pytest.raises(ValueError), _run_folder(tmp_path, "distill", exist_ok=False):
            raise ValueError("bad data")
    assert not any(tmp_path.iterdir())  # no distill, distill2, ...
    with pytest.raises(ValueError), _run_folder(tmp_path, "distill", exist_ok=False) as folder:
        (folder / "weights").mkdir()
        (folder / "weights" / "last.pt").write_bytes(b"x")
        raise ValueError("a crash after the first checkpoint")
    assert (folder / "weights" / "last.pt").is_file()  # kept: it can be resumed
    with _run_folder(tmp_path, "distill", exist_ok=False) as ok:
        pass
    assert ok.is_dir() and ok != folder  # a run that ends normally keeps its folder, however empty


def test_a_failed_resume_never_removes_the_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError), _run_folder(tmp_path, "run", exist_ok=False, resuming=True):
        raise ValueError("bad resume")
    assert (tmp_path / "run").is_dir()
