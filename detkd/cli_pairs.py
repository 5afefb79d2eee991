"""Ultralytics-style ``key=value`` arguments for ``detkd distill``, ``train``, ``eval``, ``export`` and ``cache``.

``detkd distill teacher=t.pt model=yolov8n.yaml data=d.yaml epochs=3 lr0=0.01 kd.logit.weight=2`` reads as a YOLO
user types it. Each ``key=value`` becomes the dashed option it names (``epochs=3`` -> ``--epochs 3``; ``model=`` is
the student for ``distill``, as it is the trained model for ``yolo train``), a ``kd.*`` key becomes ``--set``, and
any other key an Ultralytics training argument (``--train-arg``), which is then checked against Ultralytics' own
configuration with a "did you mean". ``eval``, ``export`` and ``cache`` take their own options this way
(``detkd eval model=best.pt data=d.yaml imgsz=320 rect=false``). A value given both ways is refused rather than one
of them dropped.

Ultralytics' defaults are read from its ``cfg/default.yaml`` without importing Ultralytics (``--help`` stays fast).
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from detkd.errors import ConfigError

TRAINING_COMMANDS = ("distill", "train")  # unknown keys are Ultralytics training arguments
PAIR_COMMANDS = (*TRAINING_COMMANDS, "eval", "export", "cache")
_PAIR = re.compile(r"^([A-Za-z_][\w.-]*)=(.*)$", re.S)
_ALIASES = {"distill": {"model": "student"}}  # Ultralytics' name -> detkd's option
_NOT_PAIRS = {"set", "train_arg", "help", "resume"}  # options that have no key=value spelling


@cache
def ultralytics_defaults() -> dict[str, Any]:
    """Ultralytics' default training configuration (``ultralytics/cfg/default.yaml``), or ``{}`` if unreadable."""
    spec = importlib.util.find_spec("ultralytics")
    if spec is None or spec.origin is None:
        return {}
    try:
        data = yaml.safe_load((Path(spec.origin).parent / "cfg" / "default.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return dict(data) if isinstance(data, dict) else {}


def subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command)
    return None


def expand_pairs(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with every ``key=value`` token of a command in :data:`PAIR_COMMANDS` turned into detkd's options.

    >>> from detkd.cli import build_parser
    >>> expand_pairs(build_parser(), ["distill", "model=n.yaml", "epochs=3", "lr0=0.01", "kd.logit.weight=2"])
    ['distill', '--student', 'n.yaml', '--epochs', '3', '--train-arg', 'lr0=0.01', '--set', 'kd.logit.weight=2']
    """
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 1
    if i >= len(argv) or argv[i] not in PAIR_COMMANDS:
        return argv
    command, sub = argv[i], subparser(parser, argv[i])
    if sub is None:
        return argv
    flags = sub._option_string_actions
    by_dest = {a.dest: a for a in sub._actions if a.option_strings and a.dest not in _NOT_PAIRS}
    out, pairs, j = argv[: i + 1], [], i + 1
    while j < len(argv):
        token = argv[j]
        if token in flags and flags[token].nargs != 0:  # an option and its value, which may contain '='
            out += argv[j : j + 2]
            j += 2
            continue
        match = _PAIR.match(token)
        if match:
            pairs.append((match[1], match[2]))
        else:
            out.append(token)
        j += 1
    given = {flags[t.split("=", 1)[0]].dest for t in out if t.split("=", 1)[0] in flags}
    known = set(by_dest) | set(ultralytics_defaults())
    for key, value in pairs:
        if key.startswith("kd."):
            if "--set" not in flags:
                raise ConfigError(f"{key}={value}: KD settings apply to detkd distill, not {command}")
            out += ["--set", f"{key}={value}"]
            continue
        dest = _ALIASES.get(command, {}).get(key, key).replace("-", "_")
        action = by_dest.get(dest)
        if action is None and command not in TRAINING_COMMANDS:
            close = difflib.get_close_matches(key, sorted(by_dest), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{key}={value}: not an option of detkd {command}{hint}; see detkd {command} --help")
        if action is None:
            if ultralytics_defaults() and key not in ultralytics_defaults():
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(f"{key}={value}: not an Ultralytics training argument nor a detkd option{hint}")
            out += ["--train-arg", f"{key}={value}"]
            continue
        flag = next(f for f in action.option_strings if f.startswith("--"))
        if dest in given and not isinstance(action, argparse._AppendAction):
            raise ConfigError(f"{key}={value}: {flag} is given too (one of the two would be lost)")
        given.add(dest)
        if action.nargs == 0:  # a switch: key=true turns it on
            on = yaml.safe_load(value) if value else None
            if not isinstance(on, bool):
                raise ConfigError(f"{key}={value}: expected {key}=true or {key}=false")
            if isinstance(action, argparse.BooleanOptionalAction):  # --rect / --no-rect
                out += [flag if on else next(f for f in action.option_strings if f.startswith("--no-"))]
            else:
                out += [flag] if on else []
        else:
            out += [flag, value]
    return out
