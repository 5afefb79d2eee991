"""A run folder belongs to one process: an exclusive lock on ``<run>/.detkd.lock`` for as long as the run trains.

The lock is an operating-system lock (``flock``) on the file, so it is released the moment its process ends, however
it ends: a run killed with ``kill -9`` leaves no lock that blocks the next ``--resume``. The file also records who
holds it (pid, host, start time, command), which is what a second process is told when it finds the folder busy,
and what the next holder reports when it takes over the file of a process that no longer runs. Where ``flock`` is
not available (Windows), the file itself is the lock, created exclusively, and a file left by a process that no
longer runs on this host is taken over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

from detkd._io import read_text
from detkd.errors import DetkdError, InputFileError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOGGER = logging.getLogger(__name__)
LOCK_FILE = ".detkd.lock"


class RunFolderBusyError(DetkdError):
    """Another process holds the run folder."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _holder(text: str) -> dict[str, Any]:
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict[str, Any]) -> str:
    started = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {when}: {info.get('command', '?')}"


class RunLock:
    """The exclusive lock on one run folder; :meth:`acquire` raises :class:`RunFolderBusyError` naming the holder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            return self._acquire_file()
        fd = self._open(os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            previous = _holder(os.read(fd, 65536).decode("utf-8", "replace"))
            os.close(fd)
            raise self._busy(previous) from None
        previous = _holder(os.read(fd, 65536).decode("utf-8", "replace"))
        self._report_stale(previous)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, self._record())
        self._fd = fd
        return self

    def _open(self, flags: int) -> int:
        """The lock file itself, never what a symbolic link in its place points to (a run folder being resumed is
        untrusted: a planted link would have the lock truncate a file elsewhere)."""
        try:
            fd = os.open(self.path, flags | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as e:
            raise RunFolderBusyError(f"{self.path}: cannot be opened as a lock file ({e.strerror or e}); a run folder "
                                     "must hold its own files, not links")  from e  # fmt: skip
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunFolderBusyError(f"{self.path}: is not a regular file; a run folder must hold its own files")
        return fd

    def _acquire_file(self) -> RunLock:
        for _ in range(2):
            try:
                fd = self._open(os.O_RDWR | os.O_CREAT | os.O_EXCL)
            except RunFolderBusyError as e:
                if not isinstance(e.__cause__, FileExistsError):
                    raise
                try:
                    previous = _holder(read_text(self.path, "lock file", max_bytes=1 << 16))
                except InputFileError:
                    previous = {}
                pid = previous.get("pid")
                if previous.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
                    self._report_stale(previous)
                    self.path.unlink(missing_ok=True)
                    continue
                raise self._busy(previous) from None
            os.write(fd, self._record())
            self._fd = fd
            return self
        raise self._busy({})

    def _record(self) -> bytes:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": " ".join(sys.argv)}
        return json.dumps(info).encode()

    def _busy(self, holder: dict[str, Any]) -> RunFolderBusyError:
        who = _describe(holder) if holder else "another process"
        return RunFolderBusyError(
            f"{self.folder}: the run folder is in use by {who}; wait for it to end, or choose another --name"
        )

    def _report_stale(self, previous: dict[str, Any]) -> None:
        pid = previous.get("pid")
        if isinstance(pid, int) and pid != os.getpid():
            LOGGER.info("%s: the lock of a process that no longer runs (%s) is taken over", self.folder,
                        _describe(previous))  # fmt: skip

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no holder any more (the file stays: removing it would race the next holder)
        if fcntl is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        if fcntl is None:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
