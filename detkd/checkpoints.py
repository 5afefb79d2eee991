"""Loading checkpoints without executing untrusted pickle content.

Ultralytics checkpoints pickle whole ``nn.Module`` objects, so ``torch.load(weights_only=True)`` refuses them unless
their classes are allow-listed. detkd reads the globals a checkpoint references *before* unpickling anything,
allows only neural-network layer classes from ``torch.nn`` and ``ultralytics.nn`` plus a few plain value types, and
then loads with torch's restricted (``weights_only``) unpickler. Anything else (an ``os.system`` reduce, a class from
an unknown package such as the legacy YOLOv5 repository's ``models.yolo.Model``) is refused with a message naming
the file and the offending globals; nothing from the file is executed.
"""

from __future__ import annotations

import importlib
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkd.errors import DetkdError, InputFileError

# Modules whose nn.Module subclasses may be reconstructed from a checkpoint.
_MODULE_PREFIXES = ("torch.nn.modules.", "ultralytics.nn.modules.", "ultralytics.nn.tasks")
# Plain value types that appear in Ultralytics checkpoints (training args, paths, dtypes).
_VALUE_TYPES = {
    "collections.OrderedDict",
    "builtins.set",
    "builtins.slice",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "pathlib.Path",
    "ultralytics.utils.IterableSimpleNamespace",
    "types.SimpleNamespace",
    "datetime.datetime",
    "numpy.dtype",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtypes.Float64DType",
    "numpy.dtypes.Float32DType",
    "numpy.dtypes.Int64DType",
}


class UnsafeCheckpointError(DetkdError):
    """A checkpoint references code that detkd will not execute."""


def _resolve(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError:
        return None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    return obj


def _allowed(name: str) -> Any:
    """The object for an allowed global, or None when the global must be refused."""
    if name in _VALUE_TYPES:
        return _resolve(name)
    if name.startswith(_MODULE_PREFIXES):
        obj = _resolve(name)
        if isinstance(obj, type) and issubclass(obj, nn.Module):
            return obj
    return None


def load_checkpoint(path: str | Path, stand_ins: dict[str, type] | None = None) -> dict[str, Any]:
    """Load a ``.pt`` checkpoint with the restricted unpickler.

    Args:
        path: the checkpoint.
        stand_ins: extra globals allowed by exact name, each rebuilt as the given (inert) class instead of the
            original; used for other repositories' module classes (e.g. the legacy YOLOv5 ``models.yolo.Model``),
            whose state is kept but whose code is never imported.

    Returns:
        The checkpoint; a bare module saved with ``torch.save(model)`` is returned as ``{"model": module}``.

    Raises:
        InputFileError: the file is missing, empty, or not a PyTorch checkpoint.
        UnsafeCheckpointError: the file references globals outside the allow-list (nothing was executed).
    """
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "weights file not found")
    if p.stat().st_size == 0:
        raise InputFileError(p, "weights file is empty")
    if not zipfile.is_zipfile(p):
        raise InputFileError(p, "not a PyTorch checkpoint (expected a torch.save zip archive)")
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(p)
    except Exception as e:  # torch raises several types for damaged archives
        raise InputFileError(p, f"checkpoint is damaged ({type(e).__name__}: {e})") from e
    allowed: list[Any] = []
    refused: list[str] = []
    for name in needed:
        obj = (stand_ins or {}).get(name) or _allowed(name)
        (allowed.append((obj, name)) if obj is not None else refused.append(name))
    if refused:
        legacy = any(n.startswith("models.") for n in refused) and not stand_ins
        hint = " (a classic YOLOv5-repository checkpoint: detkd loads those as teachers)" if legacy else ""
        raise UnsafeCheckpointError(
            f"{p}: refusing to load: the checkpoint references code outside the allow-list: "
            f"{', '.join(sorted(refused)[:6])}{' ...' if len(refused) > 6 else ''}{hint}"
        )
    try:
        with torch.serialization.safe_globals(allowed):
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(f"{p}: refusing to load: {str(e).splitlines()[0]}") from e
    except (RuntimeError, EOFError) as e:
        raise InputFileError(p, f"checkpoint does not load ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if isinstance(ckpt, nn.Module):
        return {"model": ckpt}
    if not isinstance(ckpt, dict):
        raise InputFileError(p, f"expected a checkpoint dict or a module, got {type(ckpt).__name__}")
    return ckpt
