"""Small helpers shared by tests: a malicious pickle payload, one tiny distill step, a network blocker."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any


class Evil:
    """Unpickling this runs a shell command that creates ``marker``: a loader that executes pickles is caught."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


class Calls:
    """Unpickling this calls ``fn(*args)``: a checkpoint that constructs an object itself instead of restoring one."""

    def __init__(self, fn: Any, args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.fn, self.args)

    def __call__(self, *args: Any) -> Any:  # pickle wants a callable first element: a nested Calls is one
        raise AssertionError("never called while pickling")


def evil_activation(marker: Path) -> str:
    """A model-YAML activation that Ultralytics' builder would evaluate: creates ``marker``, then is an activation."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch() or nn.SiLU()"


PAYLOADS = ("pickle-reduce", "model-constructor", "module-constructor", "yaml-activation", "yaml-layer", "getattr")


def write_payload(kind: str, path: Path, marker: Path) -> Path:
    """A malicious ``.pt`` of one kind (each would create ``marker`` if a loader ran what the file says):

    * ``pickle-reduce``: a plain pickle ``os.system`` call;
    * ``model-constructor``: the file calls ``DetectionModel(cfg)`` itself, with an activation that runs code;
    * ``module-constructor``: the file calls a ``torch.nn`` layer class with arguments of its choosing;
    * ``yaml-activation``: a genuine pickled model whose architecture YAML carries that activation (code runs if the
      loader rebuilds the model from the YAML without checking it);
    * ``yaml-layer``: a genuine pickled model whose YAML names ``torch_safe_load`` as a layer, with a plain-pickle
      payload file as its argument (the builder would call it);
    * ``getattr``: a pickle reaching ``Path.touch`` through ``builtins.getattr``.
    """
    import builtins
    import copy

    import torch
    from ultralytics.nn.tasks import DetectionModel

    marker_pt = path.with_name(path.stem + "_inner.pt")
    if kind == "pickle-reduce":
        obj: Any = Evil(marker)
    elif kind == "model-constructor":
        cfg = {**_tiny_cfg(), "activation": evil_activation(marker)}
        obj = Calls(DetectionModel, (cfg,))
    elif kind == "module-constructor":
        obj = Calls(torch.nn.Conv2d, (3, 3, 1))
    elif kind in ("yaml-activation", "yaml-layer"):
        obj = DetectionModel(_tiny_cfg(), nc=2, verbose=False)
        cfg = copy.deepcopy(obj.yaml)
        if kind == "yaml-activation":
            cfg["activation"] = evil_activation(marker)
        else:
            torch.save({"model": Evil(marker)}, marker_pt)
            cfg["backbone"][0] = [-1, 1, "torch_safe_load", [repr(str(marker_pt))]]  # the builder literal_evals it
        obj.yaml = cfg
    elif kind == "getattr":
        import pathlib

        obj = Calls(Calls(builtins.getattr, (pathlib.Path, "touch")), (pathlib.Path(marker),))
    else:
        raise ValueError(kind)
    torch.save({"model": obj, "ema": None}, path)
    return path


def _tiny_cfg() -> dict[str, Any]:
    from ultralytics.nn.tasks import yaml_model_load

    return {**yaml_model_load("yolov8n.yaml"), "nc": 2}


def tiny_distill(distiller: Any, project: Path) -> dict[str, float]:
    """Train ``distiller`` for one epoch of two steps (imgsz 32, CPU) and return the last row of results.csv."""
    result = distiller.train(project=project, name="kd", epochs=1, imgsz=32, batch=4, device="cpu", val=False,
                             plots=False, fraction=0.67, workers=0)  # fmt: skip
    assert result.best.is_file()
    rows = list(csv.DictReader((result.save_dir / "results.csv").open()))
    return {k.strip(): float(v) for k, v in rows[-1].items()}


# A ``sitecustomize.py`` for a child process: every DNS lookup and socket connection fails and is recorded in the file
# named by $DETKD_NET_LOG (tests that claim to run offline assert that the file stays empty).
NET_BLOCKER = """
import os, socket

_LOG = os.environ["DETKD_NET_LOG"]

def _blocked(*args, **kwargs):
    with open(_LOG, "a") as f:
        f.write(repr(args[:2]) + "\\n")
    raise OSError("network blocked by a detkd offline test")

socket.getaddrinfo = _blocked
socket.create_connection = _blocked
socket.socket.connect = _blocked
socket.socket.connect_ex = _blocked
"""
