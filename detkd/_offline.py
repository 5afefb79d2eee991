"""Keep Ultralytics offline before it is imported.

Ultralytics resolves DNS names when ``ultralytics.utils`` is imported (to decide whether it is online), tries to
pip-install missing packages at run time, and downloads fonts and weights on demand. detkd runs on machines without
internet and must never download at run time, so every detkd module that imports Ultralytics calls
:func:`ensure_offline` first. Users who want Ultralytics' online features can set ``YOLO_OFFLINE=0`` and
``YOLO_AUTOINSTALL=1`` themselves; ``setdefault`` leaves their choice alone.
"""

from __future__ import annotations

import os


def ensure_offline() -> None:
    """Set the environment switches that keep Ultralytics from touching the network (idempotent)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
