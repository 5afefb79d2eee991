"""User-facing errors: one clear line naming the file and the problem.

The CLI prints ``DetkdError`` messages as a single line and exits non-zero; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

from pathlib import Path


class DetkdError(Exception):
    """A problem with the user's input (a file, a config, a model pair) rather than a bug in detkd.

    Its text is always one line (a message quoting a third party's multi-line error is folded).
    """

    def __str__(self) -> str:
        return " ".join(super().__str__().split())


class InputFileError(DetkdError):
    """A specific file is missing, unreadable or malformed.

    >>> print(InputFileError("data.yaml", "key 'val' is missing"))
    data.yaml: key 'val' is missing
    """

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class PairingError(DetkdError, ValueError):
    """Teacher and student cannot be paired (levels, strides, classes)."""


class ConfigError(DetkdError, ValueError):
    """A KD config has an unknown key, a wrong type or an invalid value."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: carries the run folder, so that the CLI can print how to resume it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        super().__init__(str(folder))
