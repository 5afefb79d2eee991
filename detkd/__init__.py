"""detkd: knowledge distillation for small, fast Ultralytics YOLO detectors.

Importing detkd has no side effects and does not import Ultralytics; the heavy pieces load on first use:

>>> import detkd
>>> detkd.__version__
'0.1.0'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from detkd._version import __version__

if TYPE_CHECKING:
    from detkd.engine.distiller import Distiller
    from detkd.eval.api import evaluate_model as evaluate
    from detkd.export import export_models

__all__ = ["Distiller", "__version__", "evaluate", "export_models"]


def __getattr__(name: str) -> Any:
    """``detkd.Distiller`` (train), ``detkd.evaluate`` (COCO and Ultralytics mAP) and ``detkd.export_models``
    (gated edge export), each imported on first use."""
    if name == "Distiller":
        from detkd.engine.distiller import Distiller

        return Distiller
    if name == "evaluate":
        from detkd.eval.api import evaluate_model

        return evaluate_model
    if name == "export_models":
        from detkd.export import export_models

        return export_models
    raise AttributeError(f"module 'detkd' has no attribute {name!r}")
