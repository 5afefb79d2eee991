"""Writes small classic-YOLOv5-format checkpoints for tests, without the YOLOv5 repository.

The checkpoint pickles classes named exactly as the YOLOv5 repository's (``models.yolo.Model``,
``models.common.Conv`` ...): they are defined here in throwaway modules registered in ``sys.modules`` only while
``torch.save`` runs, so the loader under test cannot import them.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch
from torch import nn
from ultralytics.nn import modules as um
from ultralytics.nn.tasks import parse_model

ANCHORS = [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]]


def legacy_yaml(nc: int, depth: float = 0.33, width: float = 0.25) -> dict:
    """The yolov5 v6 architecture YAML as the repository pickles it."""
    return {
        "nc": nc, "depth_multiple": depth, "width_multiple": width, "anchors": ANCHORS,
        "backbone": [[-1, 1, "Conv", [64, 6, 2, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 3, "C3", [128]],
                     [-1, 1, "Conv", [256, 3, 2]], [-1, 6, "C3", [256]], [-1, 1, "Conv", [512, 3, 2]],
                     [-1, 9, "C3", [512]], [-1, 1, "Conv", [1024, 3, 2]], [-1, 3, "C3", [1024]],
                     [-1, 1, "SPPF", [1024, 5]]],
        "head": [[-1, 1, "Conv", [512, 1, 1]], [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],
                 [[-1, 6], 1, "Concat", [1]], [-1, 3, "C3", [512, False]], [-1, 1, "Conv", [256, 1, 1]],
                 [-1, 1, "nn.Upsample", ["None", 2, "nearest"]], [[-1, 4], 1, "Concat", [1]],
                 [-1, 3, "C3", [256, False]], [-1, 1, "Conv", [256, 3, 2]], [[-1, 14], 1, "Concat", [1]],
                 [-1, 3, "C3", [512, False]], [-1, 1, "Conv", [512, 3, 2]], [[-1, 10], 1, "Concat", [1]],
                 [-1, 3, "C3", [1024, False]], [[17, 20, 23], 1, "Detect", ["nc", "anchors"]]],
        "ch": 3,
    }  # fmt: skip


def _fake_modules() -> tuple[types.ModuleType, types.ModuleType, dict[str, type]]:
    common = types.ModuleType("models.common")
    yolo = types.ModuleType("models.yolo")
    classes: dict[str, type] = {}
    for name in ("Conv", "C3", "Bottleneck", "SPPF", "Concat"):
        cls = type(name, (getattr(um, name),), {"__module__": "models.common"})
        setattr(common, name, cls)
        classes[name] = cls

    class Detect(nn.Module):
        pass

    class Model(nn.Module):
        pass

    for cls in (Detect, Model):
        cls.__module__, cls.__qualname__ = "models.yolo", cls.__name__
        setattr(yolo, cls.__name__, cls)
    classes.update(Detect=Detect, Model=Model)
    return common, yolo, classes


def build_legacy_model(nc: int = 3, seed: int = 0) -> tuple[nn.Module, dict]:
    """(the fake legacy model in float32 with random weights and BN statistics, its YAML)."""
    torch.manual_seed(seed)
    cfg = legacy_yaml(nc)
    layers, _ = parse_model({**cfg, "head": cfg["head"][:-1]}, ch=3, verbose=False)
    for m in layers.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics so that eps and routing matter
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.eps = 1e-3
    _, _, classes = _fake_modules()
    for m in layers.modules():
        for name in ("Conv", "C3", "Bottleneck", "SPPF", "Concat"):
            if type(m).__name__ == name and type(m).__module__.startswith("ultralytics"):
                m.__class__ = classes[name]
    detect = classes["Detect"]()
    chans = [int(layers[i].conv.out_channels) if hasattr(layers[i], "conv") else int(layers[i].cv3.conv.out_channels)
             for i in (17, 20, 23)]  # fmt: skip
    detect.m = nn.ModuleList(nn.Conv2d(c, 3 * (5 + nc), 1) for c in chans)
    strides = torch.tensor([8.0, 16.0, 32.0])
    detect.register_buffer("anchors", torch.tensor(ANCHORS, dtype=torch.float32).view(3, 3, 2) / strides.view(3, 1, 1))
    detect.stride, detect.nc, detect.na, detect.nl, detect.no = strides, nc, 3, 3, 5 + nc
    detect.f, detect.i, detect.type = [17, 20, 23], 24, "models.yolo.Detect"
    model = classes["Model"]()
    model.model = nn.Sequential(*layers, detect)
    model.yaml, model.names, model.stride, model.nc = cfg, [f"class{i}" for i in range(nc)], strides, nc
    return model.eval(), cfg


def save_legacy_checkpoint(path: Path, model: nn.Module, **extra: object) -> Path:
    """``torch.save`` as the YOLOv5 repository does (fp16 model under 'model'), with the fake classes importable
    only during the save."""
    common, yolo, _ = _fake_modules()
    # pickle looks the classes up by name: point the names at the classes the model actually uses
    for m in model.modules():
        target = (
            common if type(m).__module__ == "models.common" else yolo if type(m).__module__ == "models.yolo" else None
        )
        if target is not None:
            setattr(target, type(m).__qualname__, type(m))
    pkg = types.ModuleType("models")
    saved = {k: sys.modules.get(k) for k in ("models", "models.common", "models.yolo")}
    sys.modules.update({"models": pkg, "models.common": common, "models.yolo": yolo})
    try:
        import copy

        torch.save({"epoch": -1, "model": copy.deepcopy(model).half(), "ema": None, **extra}, path)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return path
