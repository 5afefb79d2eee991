"""KD configuration: frozen dataclasses loaded from YAML, with ``--set section.key=value`` overrides.

Every family (``feature``, ``logit``, ``box``) names its ``method`` and has a ``weight``, a ``schedule`` and one
sub-section per method for that method's own options; ``balance`` scales the KD terms against the detection loss.
Unknown keys, wrong types and out-of-range values are errors that name the key and suggest the closest valid one.
``detkd losses`` prints every method with its options and defaults (from :mod:`detkd.catalog`).

>>> cfg = load_kd_config(None, ["kd.logit.weight=2", "feature.method=cwd", "feature.cwd.temperature=4"])
>>> cfg.logit.weight, cfg.feature.method, cfg.feature.cwd.temperature
(2.0, 'cwd', 4.0)
>>> load_kd_config(None, ["kd.logit.wieght=2"])
Traceback (most recent call last):
...
detkd.errors.ConfigError: kd.logit: unknown key 'wieght' (did you mean 'weight'?); ...
"""

from detkd.config.coerce import kd_config_from_dict
from detkd.config.files import (
    PRESET_PREFIX,
    dump_kd_config,
    load_kd_config,
    preset_path,
    presets,
    resolve_kd_config,
)
from detkd.config.overrides import apply_overrides
from detkd.config.schedule import SCHEDULE_KINDS, ScheduleConfig
from detkd.config.schema import (
    BALANCE_MODES,
    BCE_WEIGHTINGS,
    FEATURE_POSITIONS,
    HEAD_POSITIONS,
    IOU_KINDS,
    TARGET_RANKS,
    BalanceConfig,
    BCEOptions,
    BoundedL2Options,
    BoxKDConfig,
    CWDOptions,
    FeatureKDConfig,
    FGDOptions,
    FineGrainedOptions,
    IoUOptions,
    KDConfig,
    LDOptions,
    LogitKDConfig,
    MGDOptions,
    MSEOptions,
    PKDOptions,
    RelationOptions,
    SoftTargetsConfig,
    UnlabeledConfig,
)

__all__ = [
    "BALANCE_MODES",
    "BCE_WEIGHTINGS",
    "FEATURE_POSITIONS",
    "HEAD_POSITIONS",
    "IOU_KINDS",
    "PRESET_PREFIX",
    "SCHEDULE_KINDS",
    "TARGET_RANKS",
    "BCEOptions",
    "BalanceConfig",
    "BoundedL2Options",
    "BoxKDConfig",
    "CWDOptions",
    "FGDOptions",
    "FeatureKDConfig",
    "FineGrainedOptions",
    "IoUOptions",
    "KDConfig",
    "LDOptions",
    "LogitKDConfig",
    "MGDOptions",
    "MSEOptions",
    "PKDOptions",
    "RelationOptions",
    "ScheduleConfig",
    "SoftTargetsConfig",
    "UnlabeledConfig",
    "apply_overrides",
    "dump_kd_config",
    "kd_config_from_dict",
    "load_kd_config",
    "preset_path",
    "presets",
    "resolve_kd_config",
]
