"""detkd's messages in a plain Python session: shown at INFO while a detkd call runs, unless the host configured
logging itself.

Ultralytics prints through its own handler, so from Python a user saw Ultralytics' progress but none of detkd's
(the data check, the teacher's score, where reports went): the ``detkd`` logger has no handler of its own and
Python's last-resort handler shows warnings only. :func:`console_logging` attaches one handler to the ``detkd``
logger for the duration of a call, and only when neither it nor the root logger has one (a host that set up
logging, and the CLI, which does, keep their own choice); it removes the handler afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def console_logging() -> Iterator[None]:
    """Show the ``detkd`` logger's INFO messages on stderr inside the block, if nothing else would show them."""
    logger = logging.getLogger("detkd")
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    if level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def logged(fn: F) -> F:
    """Run ``fn`` inside :func:`console_logging` (for detkd's public entry points)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with console_logging():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def logged_as(staged: Path, final: Path) -> Iterator[None]:
    """Ultralytics' log lines name ``final`` where they would name ``staged`` (a folder that is renamed away)."""
    ul = logging.getLogger("ultralytics")

    def rename(record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and str(staged) in record.msg:
            record.msg = record.msg.replace(str(staged), str(final))
        return True

    ul.addFilter(rename)
    try:
        yield
    finally:
        ul.removeFilter(rename)
