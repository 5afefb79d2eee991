"""Loading checkpoints without running anything the file chooses.

A pickle is a program: besides data it can name any global and call it with arguments of its choosing. torch's
restricted unpickler (``weights_only=True``) only calls globals on an allow-list, but an allow-list of *model
classes* is not enough: a crafted ``.pt`` can call ``DetectionModel(cfg)`` itself, and Ultralytics' model builder
evaluates strings of that ``cfg`` as Python. So detkd never lets a checkpoint construct a model:

* every ``nn.Module`` class the file references (from ``torch.nn``, ``ultralytics.nn``, or, when the caller names
  them, another repository's classes) is rebuilt as an inert :class:`ModuleRecord` that only keeps the pickled
  state; a record is created only the way a module is pickled (``cls.__new__(cls)`` then its state): a file that
  calls a module class with arguments is refused;
* a few plain value types (paths, namespaces, dates, NumPy scalars and dtypes) are allowed as themselves;
* anything else (``os.system``, ``builtins.eval``, an unknown package) is refused with the file and the names,
  before a byte is unpickled.

The caller then rebuilds the real network from data only: the architecture YAML the record holds (checked by
:mod:`detkd.students.model_spec`) and its tensors (see :func:`detkd.students.ultralytics_yolo.load_detection_model`).
"""

from __future__ import annotations

import importlib
import pickle
import zipfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from detkd.errors import DetkdError, InputFileError

# Modules whose nn.Module subclasses may appear in a checkpoint (as records).
_MODULE_PREFIXES = ("torch.nn.modules.", "ultralytics.nn.")
# Plain value types that appear in Ultralytics checkpoints (training args, paths, dtypes); built as themselves.
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
    """A checkpoint references or does something that detkd will not execute."""


MAX_DEPTH = 64  # nesting of modules in a pickled network (YOLO models are 4-6 deep)


class RecordError(DetkdError):
    """A record's structure is not what a pickled module looks like (the caller names the file)."""


class ModuleRecord:
    """The pickled state of one module, with no behaviour: what a checkpoint says, never what it runs.

    Attributes:
        global_name: the class the file names (e.g. ``ultralytics.nn.tasks.DetectionModel``); set per class.
        state: the pickled ``__dict__`` (``_parameters``, ``_buffers``, ``_modules``, plain attributes).
    """

    global_name: ClassVar[str] = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> ModuleRecord:
        if args or kwargs:  # a pickled module is rebuilt with cls.__new__(cls); arguments mean a constructor call
            raise pickle.UnpicklingError(f"the file calls {cls.global_name} with arguments of its own choosing")
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"{self.global_name}: module state is a {type(state).__name__}, not a dict")
        self.state = state

    def __repr__(self) -> str:
        return f"ModuleRecord({self.global_name})"

    @property
    def class_name(self) -> str:
        return self.global_name.rpartition(".")[2]

    def get(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)

    def _mapping(self, key: str) -> dict[Any, Any]:
        value = self.state.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise RecordError(f"{self.global_name}.{key} is a {type(value).__name__}, not a mapping")
        return value

    def children(self) -> dict[str, ModuleRecord]:
        """Child modules by name (``_modules``), in order; a non-record child is an error."""
        out: dict[str, ModuleRecord] = {}
        for k, v in self._mapping("_modules").items():
            if v is None:
                continue
            if not isinstance(v, ModuleRecord):
                raise RecordError(f"{self.global_name}: child '{k}' is a {type(v).__name__}, not a module")
            out[str(k)] = v
        return out

    def child(self, dotted: str) -> ModuleRecord | None:
        rec: ModuleRecord | None = self
        for part in dotted.split("."):
            rec = rec.children().get(part) if rec is not None else None
        return rec

    def walk(self) -> Iterator[tuple[str, ModuleRecord]]:
        """(prefix, record) for this module and every submodule, depth first; a module that contains itself, or a
        tree deeper than :data:`MAX_DEPTH`, is an error (a pickled network is a tree)."""
        stack: list[tuple[str, ModuleRecord, tuple[int, ...]]] = [("", self, ())]
        while stack:
            prefix, rec, ancestors = stack.pop()
            if id(rec) in ancestors:
                raise RecordError(f"{rec.global_name} at '{prefix.rstrip('.')}' contains itself")
            if len(ancestors) > MAX_DEPTH:
                raise RecordError(f"module tree deeper than {MAX_DEPTH} levels")
            yield prefix, rec
            children = list(rec.children().items())
            for name, child in reversed(children):
                stack.append((f"{prefix}{name}.", child, (*ancestors, id(rec))))

    def tensors(self) -> dict[str, Tensor]:
        """The state dict the module would have: parameters and persistent buffers of every submodule."""
        out: dict[str, Tensor] = {}
        for prefix, rec in self.walk():
            skip = rec.state.get("_non_persistent_buffers_set") or ()
            if not isinstance(skip, (set, frozenset, list, tuple)) or not all(isinstance(k, str) for k in skip):
                raise RecordError(f"{rec.global_name}._non_persistent_buffers_set is not a set of names")
            for kind in ("_parameters", "_buffers"):
                for k, v in rec._mapping(kind).items():
                    if v is None or (kind == "_buffers" and k in skip):
                        continue
                    if not isinstance(v, Tensor):
                        raise RecordError(f"{rec.global_name}.{k} is a {type(v).__name__}, not a tensor")
                    out[f"{prefix}{k}"] = v
        return out


def _resolve(name: str) -> Any:
    module, _, attr = name.rpartition(".")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError:
        return None
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    return obj


def _is_module_class(name: str) -> bool:
    if not name.startswith(_MODULE_PREFIXES):
        return False
    obj = _resolve(name)
    return isinstance(obj, type) and issubclass(obj, nn.Module)


def _record_class(name: str) -> type[ModuleRecord]:
    return type(f"ModuleRecord[{name}]", (ModuleRecord,), {"global_name": name})


def load_checkpoint(path: str | Path, *, foreign: Collection[str] = ()) -> dict[str, Any]:
    """Load a ``.pt`` checkpoint; every module in it comes back as a :class:`ModuleRecord` (see module doc).

    Args:
        path: the checkpoint.
        foreign: exact names of other repositories' module classes to accept as records too (e.g. the legacy
            YOLOv5 ``models.yolo.Model``); their code is never imported.

    Returns:
        The checkpoint; a bare module saved with ``torch.save(model)`` is returned as ``{"model": record}``.

    Raises:
        InputFileError: the file is missing, empty, damaged, or not a PyTorch checkpoint.
        UnsafeCheckpointError: the file references globals outside the allow-list, or calls a module class
            (nothing was executed).
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
        if name in _VALUE_TYPES and (obj := _resolve(name)) is not None:
            allowed.append((obj, name))
        elif name in foreign or _is_module_class(name):
            allowed.append((_record_class(name), name))
        else:
            refused.append(name)
    if refused:
        legacy = any(n.startswith("models.") for n in refused) and not foreign
        hint = " (a classic YOLOv5-repository checkpoint: detkd loads those as teachers)" if legacy else ""
        raise UnsafeCheckpointError(
            f"{p}: refusing to load: the checkpoint references code outside the allow-list: "
            f"{', '.join(sorted(refused)[:6])}{' ...' if len(refused) > 6 else ''}{hint}"
        )
    try:
        with torch.serialization.safe_globals(allowed):
            ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(f"{p}: refusing to load: {_unpickler_reason(e)}") from e
    except (RuntimeError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise InputFileError(p, f"checkpoint does not load ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if isinstance(ckpt, ModuleRecord):
        return {"model": ckpt}
    if not isinstance(ckpt, dict):
        raise InputFileError(p, f"expected a checkpoint dict or a module, got {type(ckpt).__name__}")
    return ckpt


def _unpickler_reason(e: Exception) -> str:
    """The restricted unpickler's own reason, without the advice torch wraps around it (which suggests switching
    the restriction off: exactly what must not be done with an untrusted file)."""
    text = str(e)
    _, found, after = text.partition("WeightsUnpickler error:")
    reason = after.strip().split("\n\n")[0] if found else text
    return " ".join(reason.split()) or type(e).__name__


def model_record(ckpt: dict[str, Any], path: str | Path) -> ModuleRecord:
    """The model of a loaded checkpoint (its EMA when there is one, as Ultralytics does)."""
    rec = ckpt.get("ema") if ckpt.get("ema") is not None else ckpt.get("model")
    if not isinstance(rec, ModuleRecord):
        raise InputFileError(path, "checkpoint holds no model ('ema' or 'model' key)")
    if rec.class_name == "DistillationModel":  # Ultralytics' built-in KD wraps the student until the run ends
        try:
            inner = rec.children().get("student_model")
        except RecordError as e:
            raise InputFileError(path, f"checkpoint model is malformed ({e})") from e
        if inner is None:
            raise InputFileError(path, "Ultralytics distillation checkpoint holds no student_model")
        rec = inner
    return rec
