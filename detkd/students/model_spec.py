"""Model YAMLs checked before Ultralytics builds them: an architecture is data, never code.

Ultralytics' model builder (``parse_model``) evaluates the ``activation`` string as Python and looks layer names up
in its module's globals, so a model YAML, or the architecture dict inside a checkpoint, could run code or call a
function that is not a layer. Every architecture detkd builds passes :func:`check_model_dict` first:

* ``activation`` must read ``nn.<Class>(<literals>)`` with ``Class`` a ``torch.nn`` activation;
* each layer row is ``[from, repeats, module, args]``: ``from`` an index (or list of indices) of an earlier layer,
  ``repeats`` a small positive integer, ``module`` a layer class of ``ultralytics.nn.modules`` (not
  ``TorchVision``, which builds a torchvision backbone and may download its weights), ``nn.<Class>`` of
  ``torch.nn`` or ``torchvision.ops.<Class>``; ``args`` plain literals (numbers, strings, booleans, None, lists);
* sizes are bounded (integers in arguments up to :data:`MAX_INT`, repeats up to :data:`MAX_REPEATS`, scale
  multipliers up to :data:`MAX_MULTIPLE`) so a file cannot ask for a network that exhausts memory while it builds.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from torch import nn

from detkd._io import read_yaml
from detkd._offline import offline_env
from detkd.errors import InputFileError

with offline_env():  # Ultralytics reads its offline switches when first imported
    import ultralytics.nn.tasks as ul_tasks

MAX_INT = 16384  # channels, kernel sizes, classes: far above any real detector's
# parse_model turns a string argument naming one of its local variables into that object (the architecture dict,
# the layer list, a module...). Only locals holding plain values may be named, as Ultralytics' own YAMLs do.
_CODE = ul_tasks.parse_model.__code__
_BUILDER_LOCALS = set(_CODE.co_varnames) | set(_CODE.co_cellvars)
_PLAIN_LOCALS = {"nc", "kpt_shape", "reg_max", "end2end", "legacy"}
MAX_REPEATS = 64
MAX_MULTIPLE = 8.0
MAX_LAYERS = 512
_REFUSED_LAYERS = {"TorchVision": "builds a torchvision model and may download its weights"}
_TOP_KEYS_NUMERIC = ("depth_multiple", "width_multiple")


def _activation(value: Any) -> str | None:
    """None when ``value`` is an allowed activation spec, else why not."""
    if not isinstance(value, str):
        return f"must be a string like 'nn.SiLU()', got {type(value).__name__}"
    try:
        call = ast.parse(value.strip(), mode="eval").body
    except SyntaxError:
        return "is not of the form nn.<Activation>(...)"
    if not isinstance(call, ast.Call):
        return "is not of the form nn.<Activation>(...)"
    func, parts = call.func, []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        return "is not of the form nn.<Activation>(...)"
    parts.append(func.id)
    if parts[1:] not in (["nn"], ["nn", "torch"]):
        return "must name a torch.nn class (nn.<Activation>(...))"
    klass = getattr(nn, parts[0], None)
    if not (isinstance(klass, type) and issubclass(klass, nn.Module) and klass.__module__.endswith("activation")):
        return f"names {parts[0]}, not a torch.nn activation"
    for a in [*call.args, *(k.value for k in call.keywords)]:
        try:
            ast.literal_eval(a)
        except ValueError:
            return "has arguments that are not literals"
    return None


def _layer_class(name: Any) -> str | None:
    """None when ``name`` is a module the builder may construct, else why not."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", name):
        return f"module {name!r} is not a layer name"
    if name in _REFUSED_LAYERS:
        return f"module {name} is refused ({_REFUSED_LAYERS[name]})"
    if name.startswith("nn."):
        obj = getattr(nn, name[3:], None)
    elif name.startswith("torchvision.ops."):
        import torchvision

        obj = getattr(torchvision.ops, name[len("torchvision.ops.") :], None)
    else:
        obj = vars(ul_tasks).get(name)
        if isinstance(obj, type) and not obj.__module__.startswith("ultralytics.nn.modules"):
            obj = None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        return f"module {name!r} is not a known layer class"
    return None


def _literal(value: Any, depth: int = 0) -> str | None:
    """None when ``value`` is a plain, bounded literal, else why not."""
    if isinstance(value, str) and value in _BUILDER_LOCALS - _PLAIN_LOCALS:
        return f"argument '{value}' would hand the builder's own '{value}' object to the layer"
    if value is None or isinstance(value, (bool, str)):
        return None
    if isinstance(value, int):
        return None if abs(value) <= MAX_INT else f"integer {value} is larger than {MAX_INT}"
    if isinstance(value, float):
        return None if abs(value) <= MAX_INT else f"number {value} is larger than {MAX_INT}"
    if isinstance(value, (list, tuple)) and depth < 3:
        for v in value:
            if (why := _literal(v, depth + 1)) is not None:
                return why
        return None
    return f"argument of type {type(value).__name__} is not a plain literal"


def _row(i: int, row: Any) -> str | None:
    if not (isinstance(row, (list, tuple)) and len(row) == 4):
        return "is not [from, repeats, module, args]"
    f, n, m, args = row
    froms = f if isinstance(f, (list, tuple)) else [f]
    low, high = (-1, 0) if i == 0 else (-i, i - 1)  # layer 0 reads the input; layer i, layers 0..i-1
    if not froms or any(isinstance(x, bool) or not isinstance(x, int) or not low <= x <= high for x in froms):
        return f"'from' {f!r} must name earlier layers ({low}..{high})"
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_REPEATS:
        return f"repeats {n!r} must be an integer 1..{MAX_REPEATS}"
    if (why := _layer_class(m)) is not None:
        return why
    if not isinstance(args, (list, tuple)):
        return f"args {args!r} must be a list"
    return _literal(list(args))


def _plain(value: Any, depth: int = 0) -> bool:
    """True for YAML-like data: None, bool, int, float, str, and lists/dicts of them (not too deep)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if depth > 8:
        return False
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain(v, depth + 1) for k, v in value.items())
    return False


def check_model_dict(d: Any, source: str | Path) -> dict[str, Any]:
    """``d`` unchanged when it is a buildable, plain-data architecture (see module doc).

    Raises:
        InputFileError: naming ``source`` and the first problem.
    """
    if not isinstance(d, dict):
        raise InputFileError(source, f"model architecture must be a mapping, got {type(d).__name__}")
    for key, value in d.items():
        if not isinstance(key, str) or not _plain(value):
            raise InputFileError(source, f"model architecture key {key!r} holds something other than plain data")
    rows = []
    for part in ("backbone", "head"):
        if not isinstance(d.get(part), list):
            raise InputFileError(source, f"model architecture needs a '{part}' list of layers")
        rows += d[part]
    if not rows or len(rows) > MAX_LAYERS:
        raise InputFileError(source, f"model architecture has {len(rows)} layers (1..{MAX_LAYERS})")
    if "activation" in d and d["activation"] is not None and (why := _activation(d["activation"])) is not None:
        raise InputFileError(source, f"activation {d['activation']!r} {why}")
    for key in ("nc", "ch", "channels", "reg_max"):
        v = d.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 < v <= MAX_INT):
            raise InputFileError(source, f"'{key}: {v!r}' must be an integer 1..{MAX_INT}")
    for key in _TOP_KEYS_NUMERIC:
        v = d.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= MAX_MULTIPLE):
            raise InputFileError(source, f"'{key}: {v!r}' must be a number in (0, {MAX_MULTIPLE:g}]")
    scales = d.get("scales")
    if scales is not None:
        if not isinstance(scales, dict):
            raise InputFileError(source, "'scales' must map a scale letter to [depth, width, max_channels]")
        for k, v in scales.items():
            ok = isinstance(v, (list, tuple)) and len(v) == 3 and _literal(list(v)) is None
            ok = ok and all(isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in v)
            if not ok or max(v[0], v[1]) > MAX_MULTIPLE:
                raise InputFileError(source, f"scales.{k}: {v!r} must be [depth, width, max_channels], positive")
    for key in ("scale", "yaml_file"):
        if d.get(key) is not None and not isinstance(d[key], str):
            raise InputFileError(source, f"'{key}' must be a string")
    for i, row in enumerate(rows):
        if (why := _row(i, row)) is not None:
            raise InputFileError(source, f"layer {i} {list(row) if isinstance(row, tuple) else row!r}: {why}")
    return d


def load_model_yaml(spec: str | Path) -> dict[str, Any]:
    """The architecture dict of a model YAML (a file, or a name Ultralytics ships such as ``yolov8n.yaml``),
    read boundedly and checked; the scale letter is taken from the name as Ultralytics does."""
    text = str(spec)
    if "://" in text:
        raise InputFileError(spec, "a model YAML must be a local file (detkd never downloads)")
    path = Path(text)
    if path.suffix not in (".yaml", ".yml"):
        raise InputFileError(spec, "expected a model YAML (.yaml) or a checkpoint (.pt)")
    file = path if path.is_file() else _packaged(path)
    if file is None:
        raise InputFileError(spec, "model YAML not found (a file path or an Ultralytics name like yolov8n.yaml)")
    d = read_yaml(file, "model YAML")
    if not isinstance(d, dict):
        raise InputFileError(file, "a model YAML must be a mapping with 'backbone' and 'head'")
    d["scale"] = ul_tasks.guess_model_scale(path)
    d["yaml_file"] = str(path)
    return check_model_dict(d, file)


def _packaged(path: Path) -> Path | None:
    """A model YAML shipped inside Ultralytics (``yolov8n.yaml`` -> ``cfg/models/v8/yolov8.yaml``), or None."""
    if path.parent != Path("."):
        return None  # a path with folders names a file of the user's, which does not exist
    from ultralytics.utils import ROOT

    unified = re.sub(r"(\d+)([nslmx])(.+)?$", r"\1\3", path.stem) + path.suffix
    for name in (path.name, unified):
        found = sorted((ROOT / "cfg" / "models").rglob(name))
        if found:
            return found[0]
    return None
