"""detkd: knowledge distillation for small, fast Ultralytics YOLO detectors.

Importing detkd has no side effects and does not import Ultralytics; the heavy pieces load on first use:

>>> import detkd
>>> detkd.__version__
'0.1.0'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from detkd.engine.distiller import Distiller

__all__ = ["Distiller", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Distiller":
        from detkd.engine.distiller import Distiller

        return Distiller
    raise AttributeError(f"module 'detkd' has no attribute {name!r}")
