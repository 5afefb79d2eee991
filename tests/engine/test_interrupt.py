"""Ctrl-C during a run says how to resume it (or that there is nothing to resume yet)."""

from __future__ import annotations

from pathlib import Path

import pytest

from detkd.cli import _interrupted
from detkd.engine.distiller import _run_folder
from detkd.errors import RunInterrupted


def test_ctrl_c_inside_a_run_names_its_folder_and_releases_the_lock(tmp_path: Path) -> None:
    with pytest.raises(RunInterrupted) as e, _run_folder(tmp_path, "run", exist_ok=False) as folder:
        raise KeyboardInterrupt
    assert e.value.folder == folder == (tmp_path / "run").resolve()
    assert _interrupted("distill", e.value).endswith(f"nothing to resume in {folder} (start the run again)")
    (folder / "weights").mkdir()
    (folder / "weights" / "resume.pt").write_bytes(b"x")
    assert _interrupted("distill", e.value) == (
        f"interrupted; continue from the last complete epoch with: detkd distill --resume {folder}"
    )
    with _run_folder(tmp_path, "run", exist_ok=False, resuming=True):  # the lock was released
        pass


def test_ctrl_c_outside_a_run_is_plain() -> None:
    assert _interrupted("eval", KeyboardInterrupt()) == "interrupted"
