"""Keep Ultralytics offline before it is imported.

Ultralytics resolves DNS names when ``ultralytics.utils`` is imported (to decide whether it is online), tries to
pip-install missing packages at run time, and downloads fonts and weights on demand. detkd runs on machines without
internet and must never download at run time, so every detkd module that imports Ultralytics calls
:func:`ensure_offline` first. Users who want Ultralytics' online features can set ``YOLO_OFFLINE=0`` and
``YOLO_AUTOINSTALL=1`` themselves; ``setdefault`` leaves their choice alone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def ensure_offline() -> None:
    """Set the environment switches that keep Ultralytics from touching the network (idempotent)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")


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
    _decline_openvino_telemetry()
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


def _decline_openvino_telemetry() -> None:
    """Answer OpenVINO's telemetry consent check with "declined" in this process (its opt-out is a file in $HOME)."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:
        return
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED
