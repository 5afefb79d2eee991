"""Shipped recipe presets (``--kd preset:NAME``): each loads, says what it is for, and means what it says."""

from __future__ import annotations

import pytest

from detkd.cli import build_parser
from detkd.config import load_kd_config, presets
from detkd.errors import ConfigError


def test_the_presets_are_shipped_and_the_help_names_each():
    names = set(presets())
    assert names == {"offline", "unlabeled", "cross-family", "logit-only", "online"}
    distill = build_parser()._subparsers._group_actions[0].choices["distill"]  # type: ignore[union-attr]
    help_text = next(a.help for a in distill._actions if a.dest == "kd")
    assert all(f"preset:{n}" in help_text for n in names)
    for path in presets().values():
        assert path.read_text().startswith(f'# detkd preset "{path.stem}"')  # a comment says what it is for


def test_each_preset_sets_what_it_promises():
    offline = load_kd_config("preset:offline")
    assert offline.feature.weight == 0 and offline.logit.weight > 0 and offline.box.weight > 0
    unlabeled = load_kd_config("preset:unlabeled")
    assert (
        unlabeled.feature.weight == 0 and unlabeled.unlabeled.pseudo_labels and unlabeled.unlabeled.pseudo_conf == 0.4
    )
    cross = load_kd_config("preset:cross-family")
    assert (cross.feature.method, cross.box.method) == ("pkd", "iou")
    logit = load_kd_config("preset:logit-only", ["logit.weight=2"])  # overrides apply on top
    assert (logit.feature.weight, logit.box.weight, logit.logit.weight) == (0, 0, 2)
    online = load_kd_config("preset:online")
    assert online.feature.weight == 0 and online.logit.mode == "add" and online.logit.weight > 0


def test_a_teacher_that_learns_in_the_run_gets_the_online_recipe(tiny_data):
    from detkd.engine.distiller import Distiller

    for d in (
        Distiller("self", "yolov8n.yaml", tiny_data),
        Distiller(None, "yolov8n.yaml", tiny_data, peers=["yolov8n.yaml"]),
    ):
        assert d.kd == load_kd_config("preset:online") and d.composite.det_cls_scale == 1.0
    given = Distiller("self", "yolov8n.yaml", tiny_data, kd="preset:logit-only")  # a recipe given is used as it is
    assert given.kd.logit.mode == "blend" and given.composite.det_cls_scale < 1.0


def test_an_unknown_preset_names_the_closest():
    with pytest.raises(ConfigError, match=r"--kd preset:ofline: no such preset \(did you mean 'offline'\?\)"):
        load_kd_config("preset:ofline")
