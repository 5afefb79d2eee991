import pytest

from detkd.config import KDConfig, dump_kd_config, load_kd_config
from detkd.errors import ConfigError, InputFileError


def test_defaults_are_the_documented_recipe():
    cfg = load_kd_config()
    assert cfg == KDConfig()
    assert (cfg.feature.weight, cfg.feature.mask) == (1.0, "gt")
    assert (cfg.logit.weight, cfg.logit.alpha, cfg.logit.temperature) == (1.0, 0.3, 1.0)
    assert (cfg.box.weight, cfg.box.positions) == (1.0, "assigner")


def test_overrides_with_and_without_kd_prefix():
    cfg = load_kd_config(None, ["kd.logit.weight=2", "box.positions=teacher", "feature.weight=0"])
    assert cfg.logit.weight == 2.0 and cfg.box.positions == "teacher" and cfg.feature.weight == 0.0


def test_yaml_file_round_trip(tmp_path):
    cfg = load_kd_config(None, ["logit.temperature=3", "feature.mask=none"])
    path = tmp_path / "kd.yaml"
    dump_kd_config(cfg, path)
    assert load_kd_config(path) == cfg
    (tmp_path / "flat.yaml").write_text("logit:\n  alpha: 0.7\n")
    assert load_kd_config(tmp_path / "flat.yaml").logit.alpha == 0.7


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        load_kd_config(None, ["logit.temprature=2"])
    with pytest.raises(ConfigError, match="unknown key 'feat'.*did you mean 'feature'"):
        load_kd_config(None, ["feat.weight=2"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("logit.weight=-1", "must be >= 0"),
        ("logit.temperature=0", "must be > 0"),
        ("logit.alpha=1.5", "in \\[0.0, 1.0\\]"),
        ("feature.mask=boxes", "not one of none, gt, teacher"),
        ("box.weight=heavy", "expected a number"),
        ("logit.weight", "expected section.key=value"),
    ],
)
def test_invalid_values_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_kd_config(None, [override])


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(InputFileError, match="kd.yaml: KD config file not found"):
        load_kd_config(tmp_path / "kd.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("logit: [1, 2\n")
    with pytest.raises(InputFileError, match="not valid YAML"):
        load_kd_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("logit:\n  wieght: 2\n")
    with pytest.raises(ConfigError, match="wrong.yaml: .*did you mean 'weight'"):
        load_kd_config(wrong)


def test_describe_mentions_disabled_families():
    cfg = load_kd_config(None, ["feature.weight=0"])
    assert "feature: off" in cfg.describe() and "logit: weight=1.0" in cfg.describe()
