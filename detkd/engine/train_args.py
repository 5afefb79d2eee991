"""Ultralytics training arguments checked before anything is built: one line per mistake, never a traceback later.

detkd passes any Ultralytics training argument through (``--train-arg KEY=VALUE``, or keyword arguments of
``Distiller.train``). A misspelt key, a value of the wrong type or out of range, a key that has its own option, or a
device this machine does not have is reported here, naming the argument.
"""

from __future__ import annotations

import difflib
import math
import os
from typing import Any

import torch

from detkd._offline import ensure_offline
from detkd.errors import ConfigError

ensure_offline()

from ultralytics.cfg import check_cfg  # noqa: E402
from ultralytics.utils import DEFAULT_CFG_DICT  # noqa: E402

MAX_SEED = 2**32 - 1
MAX_IMGSZ = 8192

# Arguments detkd sets itself (the run folder, the model, the data it checked).
SET_BY_DETKD = {
    "model": "the model is --model/--student",
    "data": "the data is --data (detkd hands Ultralytics its checked copy)",
    "project": "use --project",
    "name": "use --name",
    "exist_ok": "use --exist-ok",
    "resume": "pass --resume RUN_DIR to detkd (Ultralytics' resume=... is not used)",
    "pretrained": "detkd builds the model itself: start from weights with --student/--model X.pt",
}
# Arguments that have an option of their own on detkd's command line.
OWN_OPTIONS = {"epochs": "--epochs", "imgsz": "--imgsz", "batch": "--batch", "device": "--device",
               "seed": "--seed", "workers": "--workers"}  # fmt: skip
# Ranges of numeric arguments whose out-of-range values Ultralytics would train on until the loss explodes.
_RANGES: dict[str, tuple[float, float, bool]] = {  # name: (low, high, low inclusive)
    "lr0": (0.0, 1.0, False),
    "lrf": (0.0, 1.0, False),
    "momentum": (0.0, 1.0, True),
    "weight_decay": (0.0, 1.0, True),
    "warmup_epochs": (0.0, 1e4, True),
    "warmup_momentum": (0.0, 1.0, True),
    "warmup_bias_lr": (0.0, 1.0, True),
    "nbs": (1.0, 1e6, True),
}


def _int(name: str, value: Any, low: int, what: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name} {value!r}: must be an integer >= {low}{what}")


def check_device(device: Any) -> None:
    """``cpu``, ``mps``, a CUDA index (``0``), several (``0,1``), ``cuda`` or ``cuda:N`` that this machine has."""
    if device is None:
        return
    text = str(device).strip().lower().replace("cuda:", "")
    if text in ("cpu", "mps"):
        return
    indices = text.split(",") if text != "cuda" else ["0"]
    if not all(i.strip().isdigit() for i in indices):
        raise ConfigError(f"--device {device!r}: expected cpu, a GPU index (0), several (0,1), or cuda:N")
    count = torch.cuda.device_count()
    missing = [i.strip() for i in indices if int(i) >= count]
    if missing:
        have = f"GPUs 0..{count - 1}" if count else "no CUDA GPU"
        raise ConfigError(f"--device {device}: no CUDA device {', '.join(missing)} on this machine ({have}); "
                          "use --device cpu")  # fmt: skip


def check_train_args(args: dict[str, Any], *, option_names: bool = False) -> dict[str, Any]:
    """``args`` unchanged when every key is an Ultralytics training argument detkd lets through and every value is
    valid. ``option_names``: the keys came from ``--train-arg``, so keys with an option of their own are refused."""
    for key, value in args.items():
        if key in SET_BY_DETKD:
            raise ConfigError(f"training argument '{key}' is set by detkd: {SET_BY_DETKD[key]}")
        if option_names and key in OWN_OPTIONS:
            raise ConfigError(f"--train-arg {key}={value}: use {OWN_OPTIONS[key]} (given twice, one would be lost)")
        if key not in DEFAULT_CFG_DICT:
            close = difflib.get_close_matches(key, list(DEFAULT_CFG_DICT), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown training argument '{key}'{hint}; the valid keys are Ultralytics' (yolo cfg)")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"training argument {key}={value}: must be a finite number")
        if key in _RANGES and value is not None:
            low, high, inclusive = _RANGES[key]
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = ok and (low <= value if inclusive else low < value) and value <= high
            if not ok:
                bounds = f"{'[' if inclusive else '('}{low:g}, {high:g}]"
                raise ConfigError(f"training argument {key}={value!r}: must be a number in {bounds}")
    if "epochs" in args:
        _int("--epochs", args["epochs"], 1)
    if "imgsz" in args:
        check_imgsz(args["imgsz"])
    if "workers" in args and args["workers"] is not None:
        _int("--workers", args["workers"], 0)
    if "seed" in args:
        _int("--seed", args["seed"], 0)
        if args["seed"] > MAX_SEED:
            raise ConfigError(f"--seed {args['seed']}: must be at most {MAX_SEED} (NumPy's seed range)")
    batch = args.get("batch")
    if batch is not None and not (
        (isinstance(batch, int) and not isinstance(batch, bool) and (batch >= 1 or batch == -1))
        or (isinstance(batch, float) and 0 < batch < 1)
    ):
        raise ConfigError(f"--batch {batch!r}: must be >= 1 (or -1, or a fraction in (0, 1), for AutoBatch on a GPU)")
    check_device(args.get("device"))
    try:
        check_cfg(dict(args))  # Ultralytics' own type and fraction checks
    except (TypeError, ValueError) as e:
        raise ConfigError(" ".join(str(e).split())) from e
    return args


def check_threads(threads: int | None) -> None:
    if threads is not None:
        _int("--threads", threads, 1)
        most = max(64, 4 * (os.cpu_count() or 1))
        if threads > most:
            raise ConfigError(f"--threads {threads}: this machine has {os.cpu_count()} cores (at most {most})")


def check_imgsz(imgsz: Any) -> None:
    """A training or inference size in pixels: a positive integer up to :data:`MAX_IMGSZ`."""
    _int("--imgsz", imgsz, 1, " (a size in pixels, rounded up to a multiple of the model's stride)")
    if imgsz > MAX_IMGSZ:
        raise ConfigError(f"--imgsz {imgsz}: at most {MAX_IMGSZ} pixels")
