"""A run folder belongs to one process: a second one is told who holds it; a killed holder leaves no lock behind."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detkd.engine import runlock
from detkd.engine.runlock import RunFolderBusyError, RunLock

HOLD = "import sys, time; from detkd.engine.runlock import RunLock; RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)"  # noqa: E501


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_told_who_holds_the_folder_and_a_killed_holder_frees_it(tmp_path, caplog):
    proc = _holder(tmp_path / "run")
    try:
        with pytest.raises(RunFolderBusyError, match=rf"run: the run folder is in use by pid {proc.pid} on "):
            RunLock(tmp_path / "run").acquire()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with caplog.at_level(logging.INFO, logger="detkd.engine.runlock"), RunLock(tmp_path / "run"):
        assert f"no longer runs (pid {proc.pid}" in caplog.text  # the stale holder is detected and reported
    with RunLock(tmp_path / "run"):  # released on exit: free again
        pass


def test_two_runs_in_one_folder_cannot_both_train(tiny_data, tmp_path, capsys):
    from detkd.cli import main

    folder = tmp_path / "kd"
    proc = _holder(folder)
    try:
        argv = ["distill", "--teacher", "yolov8n.yaml", "--student", "yolov8n.yaml", "--data", str(tiny_data),
                "--epochs", "1", "--imgsz", "32", "--device", "cpu", "--project", str(tmp_path), "--name", "kd",
                "--exist-ok"]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"kd: the run folder is in use by pid {proc.pid}" in err and "choose another --name" in err
        assert main(["distill", "--resume", str(folder)]) == 2  # a resume of a busy run is refused the same way
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (folder / "results.csv").exists()


def test_without_flock_the_lock_file_itself_is_the_lock(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(runlock, "fcntl", None)
    with RunLock(tmp_path), pytest.raises(RunFolderBusyError, match="in use by pid"):
        RunLock(tmp_path).acquire()
    assert not (tmp_path / runlock.LOCK_FILE).exists()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"pid": dead.pid, "host": socket.gethostname(), "started": time.time(), "command": "detkd distill"}
    (tmp_path / runlock.LOCK_FILE).write_text(json.dumps(record))
    with caplog.at_level(logging.INFO, logger="detkd.engine.runlock"), RunLock(tmp_path):
        assert "no longer runs" in caplog.text
