"""The method registry: a method registered in one call is in the config, the catalog, the docs' tables and a run."""

from dataclasses import dataclass

import pytest
import torch

from detkd import catalog
from detkd.config import dump_kd_config, load_kd_config
from detkd.errors import ConfigError
from detkd.losses.methods import FeatureMethod
from detkd.methods import Method, get_method, method_names, register_method, unregister_method
from tests.helpers import tiny_distill


@dataclass(frozen=True)
class ToyOptions:
    """Attributes:
    power: exponent of the absolute error.
    positions: where to imitate (as for ``mse``).
    """

    power: float = 1.0
    positions: str = "all"


class ToyL1(FeatureMethod):
    calls = 0

    def level(self, i, student, teacher, mask):
        type(self).calls += 1
        err = (student - teacher.detach()).abs().pow(self.options.power).mean(1, keepdim=True)
        return err.mean() if mask is None else (err * mask).sum() / mask.sum().clamp_min(1)


LOGIT_CALLS = []


def toy_logit(sh, th, *, mask, cfg, options):
    LOGIT_CALLS.append(sh.cls_logits.shape)
    return (sh.cls_logits - th.cls_logits.detach()).pow(2).sum(1).mean()  # logits: the random pair differs there


@pytest.fixture
def toy():
    feature = register_method(
        Method(
            "feature",
            "toy_l1",
            "a test",
            "mean |A(s) - t|^power",
            "never",
            options=ToyOptions,
            loss=ToyL1,
            masks="positions",
        )
    )
    logit = register_method(Method("logit", "toy_mse", "a test", "mean (p_s - p_t)^2", "never", loss=toy_logit))
    yield feature, logit
    unregister_method("feature", "toy_l1")
    unregister_method("logit", "toy_mse")


def test_a_registered_method_is_in_the_config_and_the_catalog(toy, tmp_path):
    assert "toy_l1" in method_names("feature") and get_method("logit", "toy_mse") is toy[1]
    cfg = load_kd_config(None, ["feature.method=toy_l1", "feature.toy_l1.power=2", "logit.method=toy_mse"])
    assert cfg.feature.options == ToyOptions(power=2.0) and cfg.feature.toy_l1.power == 2.0
    dump_kd_config(cfg, tmp_path / "kd.yaml")  # a run's kd.yaml reads back to the same recipe
    assert load_kd_config(tmp_path / "kd.yaml") == cfg
    with pytest.raises(ConfigError, match=r"kd.feature.toy_l1: unknown key 'pwer' \(did you mean 'power'\?\)"):
        load_kd_config(None, ["feature.toy_l1.pwer=2"])
    text = catalog.render_text()
    assert "- toy_l1: a test" in text and "kd.feature.toy_l1.power = 1.0" in text and "- toy_mse: a test" in text
    assert "| `feature.method: toy_l1` |" in catalog.render_markdown()
    assert "`toy_l1`" in catalog.render_method_table() and "`toy_mse`" in catalog.render_method_table()


def test_unregistered_methods_are_rejected_with_the_valid_ones():
    with pytest.raises(ConfigError, match="kd.feature.method: 'toy_l1' is not one of.*relation"):
        load_kd_config(None, ["feature.method=toy_l1"])


def test_registry_refuses_duplicates_and_bad_declarations():
    with pytest.raises(ValueError, match="already registered"):
        register_method(Method("feature", "mse", "p", "f", "u"))
    with pytest.raises(ValueError, match="identifier"):
        Method("feature", "weight", "p", "f", "u")
    with pytest.raises(ValueError, match="needs a 'positions' option"):
        Method("feature", "x", "p", "f", "u", masks="positions")


@pytest.mark.slow
def test_a_registered_method_trains_in_a_run(toy, tiny_data, tmp_path):
    from detkd.engine.distiller import Distiller

    ToyL1.calls = 0
    LOGIT_CALLS.clear()
    overrides = ["feature.method=toy_l1", "feature.toy_l1.power=2", "logit.method=toy_mse", "box.weight=0"]
    d = Distiller("yolov8s.yaml", "yolov8n.yaml", tiny_data, overrides=overrides)
    last = tiny_distill(d, tmp_path)
    assert last["train/kd/feat"] > 0 and last["train/kd/cls"] > 0 and ToyL1.calls >= 3 and LOGIT_CALLS
    assert isinstance(d.composite.feature_method, ToyL1)
    assert "toy_l1" in (tmp_path / "kd" / "kd.yaml").read_text() and torch.isfinite(torch.tensor(last["train/kd/feat"]))
