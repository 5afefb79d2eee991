import pytest

from detkd.config import KDConfig, dump_kd_config, load_kd_config
from detkd.errors import ConfigError, InputFileError


def test_defaults_are_the_documented_recipe():
    cfg = load_kd_config()
    assert cfg == KDConfig()
    assert (cfg.feature.method, cfg.feature.weight, cfg.feature.mse.positions) == ("mse", 1.0, "gt")
    assert (cfg.logit.method, cfg.logit.weight, cfg.logit.alpha, cfg.logit.temperature) == ("bce", 1.0, 0.3, 1.0)
    assert (cfg.box.method, cfg.box.weight, cfg.box.positions) == ("auto", 1.0, "assigner")
    assert cfg.balance.mode == "none" and cfg.feature.schedule.kind == "constant"


def test_overrides_with_and_without_kd_prefix():
    cfg = load_kd_config(None, ["kd.logit.weight=2", "box.positions=teacher", "feature.weight=0"])
    assert cfg.logit.weight == 2.0 and cfg.box.positions == "teacher" and cfg.feature.weight == 0.0


def test_yaml_file_round_trip(tmp_path):
    cfg = load_kd_config(
        None, ["logit.temperature=3", "feature.method=fine_grained", "feature.fine_grained.anchor_ratios=[1, 3]"]
    )
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
        ("feature.mse.positions=boxes", "kd.feature.mse.positions: 'boxes' is not one of all, gt, teacher"),
        ("feature.method=at", "kd.feature.method: 'at' is not one of mse, fine_grained, fgd, cwd, mgd, pkd"),
        ("logit.method=ce", "not one of bce, kl"),
        ("box.method=l2", "not one of auto, ld, iou, bounded_l2"),
        ("feature.cwd.temperature=0", "kd.feature.cwd.temperature: 0.0 must be > 0"),
        ("feature.mgd.mask_ratio=1", "in \\[0.0, 0.99\\]"),
        ("feature.fine_grained.anchor_ratios=2", "expected a list"),
        ("feature.fine_grained.anchor_ratios=[-1]", "must be > 0"),
        ("logit.bce.weighting=focal", "kd.logit.bce.weighting: 'focal' is not one of none, bckd, quality"),
        ("box.schedule.kind=step", "kd.box.schedule.kind: 'step' is not one of constant, linear, cosine"),
        ("box.schedule.stop_epoch=1.5", "expected an integer"),
        ("feature.schedule.warmup_epochs=-1", "kd.feature.schedule.warmup_epochs: -1.0 must be >= 0"),
        ("balance.mode=auto", "kd.balance.mode: 'auto' is not one of none, loss, grad"),
        ("balance.interval=0", "kd.balance.interval: 0 must be >= 1"),
        ("box.method=bounded_l2", None),
        ("feature.fgd.alpha_fg=-1", "kd.feature.fgd.alpha_fg: -1.0 must be >= 0"),
        ("box.weight=heavy", "expected a number"),
        ("logit.weight", "expected section.key=value"),
    ],
)
def test_invalid_values_are_clear_errors(override, message):
    if message is None:  # valid on its own: proves the list above does not reject good values
        load_kd_config(None, [override])
        return
    with pytest.raises(ConfigError, match=message):
        load_kd_config(None, [override])


def test_exponent_notation_is_a_number():
    cfg = load_kd_config(None, ["feature.fgd.lambda_global=5e-6", "balance.max_scale=1e9"])
    assert cfg.feature.fgd.lambda_global == 5e-6 and cfg.balance.max_scale == 1e9


def test_bounded_l2_needs_ground_truth_positions():
    with pytest.raises(ConfigError, match="bounded_l2 works only with 'assigner', not 'teacher'"):
        load_kd_config(None, ["box.method=bounded_l2", "box.positions=teacher"])


def test_nested_method_options_and_schedules():
    cfg = load_kd_config(
        None,
        ["feature.method=cwd", "feature.cwd.temperature=4", "logit.schedule.stop_epoch=-10", "box.ld.temperature=3"],
    )
    assert cfg.feature.options.temperature == 4.0 and cfg.box.ld.temperature == 3.0
    assert cfg.logit.schedule.stop_epoch == -10 and cfg.logit.schedule.factor(95, 100) == 0.0
    assert "feature: cwd weight=1.0 temperature=4.0" in cfg.describe()


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 0.0]),
        ("linear", [0.0, 0.5, 1.0, 0.75, 0.5, 0.0]),
        ("cosine", [0.0, 0.5, 1.0, 0.8536, 0.5, 0.0]),
    ],
)
def test_schedule_factors(kind, expected):
    sched = load_kd_config(
        None, [f"feature.schedule.kind={kind}", "feature.schedule.warmup_epochs=2", "feature.schedule.stop_epoch=6"]
    ).feature.schedule
    # decay runs from the end of warm-up (epoch 2) to the stop epoch (6); off from 6 on
    got = [round(sched.factor(p, 10), 4) for p in (0, 1, 2, 3, 4, 6)]
    assert got == expected


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
    assert "feature: off" in cfg.describe() and "logit: bce weight=1.0" in cfg.describe()


def test_a_schedule_that_leaves_a_term_off_for_the_whole_run_is_named():
    from detkd.config import BoxKDConfig, FeatureKDConfig, KDConfig, LogitKDConfig, ScheduleConfig

    off = ScheduleConfig(stop_epoch=-10)
    kd = KDConfig(feature=FeatureKDConfig(schedule=off), logit=LogitKDConfig(schedule=ScheduleConfig(stop_epoch=0)),
                  box=BoxKDConfig(weight=0.0, schedule=off))  # fmt: skip
    idle = kd.idle_terms(8)
    assert [t.split(":")[0] for t in idle] == ["kd.feature", "kd.logit"]  # box weighs 0: nothing to warn about
    assert "stops it at epoch -2" in idle[0] and "off for the whole run" in idle[0]
    assert [t.split(":")[0] for t in kd.idle_terms(12)] == ["kd.logit"]  # stop_epoch 0 is off in any run
    assert KDConfig().idle_terms(1) == []


def test_the_python_api_takes_the_recipe_as_a_dict_or_a_kdconfig(tiny_data):
    from detkd import Distiller
    from detkd.config import KDConfig

    by_dict = Distiller(
        "yolov8n.yaml", "yolov8n.yaml", tiny_data, kd={"logit": {"weight": 2.0}}, overrides=["box.weight=0"]
    )
    assert by_dict.kd.logit.weight == 2.0 and by_dict.kd.box.weight == 0
    by_config = Distiller("yolov8n.yaml", "yolov8n.yaml", tiny_data, kd=by_dict.kd)
    assert by_config.kd == by_dict.kd and isinstance(by_config.kd, KDConfig)
