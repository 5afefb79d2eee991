"""Files: output folders checked before work, text replaced atomically, content digests of inputs."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from detkd.errors import DetkdError


def check_writable(folder: Path) -> None:
    """Fail before training when ``folder`` cannot be created or written (the probe is a fresh file of its own,
    never a link someone left in the folder)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".detkd_write_test", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DetkdError(f"{folder}: output folder is not writable ({type(e).__name__}: {e.strerror or e})") from e


def check_free_space(folder: Path, need_bytes: int) -> None:
    """Fail before training when the disk holding ``folder`` lacks room for the run's checkpoints."""
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise DetkdError(
            f"{folder}: only {free / 2**20:.0f} MiB free, the run's checkpoints need about "
            f"{need_bytes / 2**20:.0f} MiB (free some space or choose another --project)"
        )


def replace_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a fresh temporary file and a rename: a kill leaves the old file or the new
    one, and a link in ``path``'s place is replaced, never written through."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex): the key of an image in a cache."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprints(files: list[Path]) -> dict[str, str]:
    """SHA-256 of each file (absolute paths as keys), recorded in the run so a resume can tell a replaced file."""
    return {str(p.resolve()): file_digest(p) for p in files if p.is_file()}
