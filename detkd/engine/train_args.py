"""Ultralytics training arguments checked before anything is built: one line per mistake, never a traceback later.

detkd passes any Ultralytics training argument through (``--train-arg KEY=VALUE``, or keyword arguments of
``Distiller.train``). A misspelt key, a value of the wrong type or out of range, a key that has its own option, or a
device this machine does not have is reported here, naming the argument.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from detkd._offline import offline_env
from detkd.errors import ConfigError
from detkd.utils.args import check_device, check_imgsz, check_int

with offline_env():  # Ultralytics reads its offline switches when first imported
    from ultralytics.cfg import check_cfg
    from ultralytics.utils import DEFAULT_CFG_DICT

MAX_SEED = 2**32 - 1

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
        check_int("--epochs", args["epochs"], 1)
    if "imgsz" in args:
        check_imgsz(args["imgsz"])
    if "workers" in args and args["workers"] is not None:
        check_int("--workers", args["workers"], 0)
    if "seed" in args:
        check_int("--seed", args["seed"], 0)
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
