"""Keep Ultralytics offline inside detkd, and only there.

Ultralytics resolves DNS names when ``ultralytics.utils`` is imported (to decide whether it is online), tries to
pip-install missing packages at run time, and downloads fonts and weights on demand. detkd runs on machines without
internet and must never download at run time. A library must also leave its host process as it found it, so each
switch is scoped:

* every detkd module that imports Ultralytics does so inside :func:`offline_env` (the environment is restored after
  the import);
* detkd's API calls (training, evaluation, export, the cache) run inside it too (:func:`offline_call`), and the
  network calls Ultralytics makes even when offline are patched out only for the time of a call
  (:func:`offline_guards`);
* only detkd's own processes (the command line, benchmark jobs) set the switches for good (:func:`ensure_offline`).

Users who want Ultralytics' online features set ``YOLO_OFFLINE=0`` and ``YOLO_AUTOINSTALL=1`` themselves: a variable
that is set is never changed.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

OFFLINE_ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "false"}  # what keeps Ultralytics off the network
F = TypeVar("F", bound=Callable[..., Any])


def ensure_offline() -> None:
    """Set the offline switches for the rest of the process (detkd's own processes only; idempotent)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def offline_env() -> Iterator[None]:
    """The offline switches for what runs inside, where the user has not set them; the environment is restored
    after (a switch detkd added is removed again).

    >>> import os
    >>> had = "YOLO_OFFLINE" in os.environ
    >>> with offline_env():
    ...     "YOLO_OFFLINE" in os.environ
    True
    >>> ("YOLO_OFFLINE" in os.environ) == had
    True
    """
    added = [key for key in OFFLINE_ENV if key not in os.environ]
    for key in added:
        os.environ[key] = OFFLINE_ENV[key]
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def offline_call(fn: F) -> F:
    """Run ``fn`` inside :func:`offline_env` (detkd's API entry points)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with offline_env():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def local_font(font: str = "Arial.ttf") -> Path | None:
    """Ultralytics' ``check_font`` without the download.

    The font from Ultralytics' settings folder if one is there (a user who has run Ultralytics online has Arial),
    else DejaVu Sans, which matplotlib ships with every install (it covers Latin, Greek and Cyrillic class names);
    None only if matplotlib's font files were removed (Ultralytics then draws with PIL's default bitmap font).
    """
    from ultralytics.utils import USER_CONFIG_DIR

    path = Path(USER_CONFIG_DIR) / Path(font).name
    if path.exists():
        return path
    import matplotlib

    bundled = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return bundled if bundled.exists() else None


@contextlib.contextmanager
def offline_guards() -> Iterator[None]:
    """Switch off the network calls Ultralytics and its export toolchain make even with ``YOLO_OFFLINE=1``.

    * ``check_det_dataset`` fetches Arial.ttf on every dataset check (training, INT8 calibration), and the
      plotting module's ``Annotator`` (batch previews, predictions) on first use: a local font is used instead
      (:func:`local_font`), so ``plots=True`` works offline;
    * the AMP self-test downloads yolo26n.pt on CUDA: skipped, AMP stays on (as when the test passes);
    * OpenVINO's converter and NNCF send usage telemetry to Google Analytics unless the user opted out: declined.
    """
    with offline_env(), _openvino_telemetry_declined():
        import ultralytics.data.utils as ul_data
        import ultralytics.engine.trainer as ul_trainer
        import ultralytics.utils.plotting as ul_plotting

        saved = (ul_data.check_font, ul_plotting.check_font, ul_trainer.check_amp)
        ul_data.check_font = ul_plotting.check_font = local_font
        ul_trainer.check_amp = lambda model: True
        try:
            yield
        finally:
            ul_data.check_font, ul_plotting.check_font, ul_trainer.check_amp = saved


@contextlib.contextmanager
def _openvino_telemetry_declined() -> Iterator[None]:
    """OpenVINO's telemetry consent check answers "declined" inside (its own opt-out is a file in $HOME)."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:
        yield
        return
    saved = OptInChecker.check
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED
    try:
        yield
    finally:
        OptInChecker.check = saved
