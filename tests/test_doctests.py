"""The ``>>>`` examples in docstrings are part of the documentation: they must run and give what they say."""

import doctest
import importlib

import pytest

MODULES = [
    "detkd.config",
    "detkd.types",
    "detkd.adapters",
    "detkd.losses._checks",
    "detkd.losses.feature",
    "detkd.losses.fgd",
    "detkd.losses.mgd",
    "detkd.losses.logit",
    "detkd.losses.box",
    "detkd.losses.masks",
    "detkd.losses.balance",
    "detkd.losses.composite",
    "detkd.engine.positions",
    "detkd.teachers",
    "detkd.teachers.dense",
    "detkd.offline.soft",
    "detkd.offline.teacher",
    "detkd.offline.unlabeled",
    "detkd.teachers.ensemble",
    "detkd.classmap",
    "detkd.cli_pairs",
    "detkd.export.standalone",
    "detkd.export.checks",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
