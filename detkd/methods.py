"""The registry of KD methods: the one place a method is declared.

A :class:`Method` names its family (``feature``, ``logit`` or ``box``), its options (a frozen dataclass: the
``kd.<family>.<name>.*`` keys), its catalog entry (paper, formula, when to use it), how its feature positions are
chosen, and its loss. Everything else reads the registry: the config (valid ``method`` values, option
sub-sections, ``--set`` keys, ``kd.yaml``), the catalog (``detkd losses`` and the docs' KD reference), the composite
(which loss runs), the position masks and the scale-sensitivity warning. Adding a method is one
:func:`register_method` call::

    from dataclasses import dataclass
    from detkd.losses.methods import FeatureMethod
    from detkd.methods import Method, register_method

    @dataclass(frozen=True)
    class L1Options:
        '''Attributes:
        positions: where to imitate (as for ``mse``).
        '''
        positions: str = "gt"

    class L1(FeatureMethod):
        def level(self, i, s, t, mask):
            err = (s - t).abs().mean(1, keepdim=True)
            return err.mean() if mask is None else (err * mask).sum() / mask.sum().clamp_min(1)

    register_method(Method("feature", "l1", paper="...", formula="mean |A(s) - t|", use="...",
                           options=L1Options, loss=L1))

The loss of a method is given either as the object itself or, for detkd's own methods (declared in
:mod:`detkd.config.builtin_methods`, below the layers that implement them), as ``"module:attribute"`` resolved on
first use. Its protocol depends on the family:

* ``feature``: a :class:`detkd.losses.methods.FeatureMethod` subclass, built once per student/teacher pair with the
  family config, the method's options and the paired levels; called on the whole pyramid, it returns the term
  and its named parts.
* ``logit``: ``fn(student_head, teacher_head, *, mask, cfg, options) -> Tensor`` (``cfg``: the logit section).
* ``box``: ``fn(student_head, teacher_head, *, mask, target, cfg, options) -> Tensor``.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from detkd.errors import ConfigError

FAMILIES = ("feature", "logit", "box")
FEATURE_MASKS = ("none", "positions", "fgd", "fine_grained")


@dataclass(frozen=True)
class Method:
    """One selectable KD method.

    Attributes:
        family: ``feature``, ``logit`` or ``box``.
        name: the value of ``kd.<family>.method``; its options live under ``kd.<family>.<name>``.
        paper / formula / use: the catalog entry (``detkd losses``, docs/recipe.md).
        options: frozen dataclass of the method's own options (defaults on every field), or None.
        loss: the implementation (see the module docstring), or ``"module:attribute"``.
        masks: feature methods only: ``none`` (every position), ``positions`` (the options' ``positions`` field:
            ``all``, ``gt``, ``teacher``, ``assigner``), ``fgd`` (foreground/background weights), ``fine_grained``
            (prior-box overlap) or a callable ``(options, batch, teacher, grids, fg_masks) -> list | None``.
        adapted: feature methods only: compare the teacher's maps to the student's maps through learned 1x1
            adapters (True) or to the raw student maps (False: methods that compare relations, not values).
        scale_sensitive: feature methods only: the loss compares raw values, so a teacher of another family
            (another scale of maps) draws a warning that suggests a magnitude-invariant method.
        positions_only: the one ``kd.<family>.positions`` value the method works with (None: any).
        box_targets: box methods only: the loss takes the assigned ground-truth boxes (``target``).
    """

    family: str
    name: str
    paper: str
    formula: str
    use: str
    options: type | None = None
    loss: Any = None
    masks: Any = "none"
    adapted: bool = True
    scale_sensitive: bool = False
    positions_only: str | None = None
    box_targets: bool = False

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"method {self.name!r}: family must be one of {FAMILIES}, not {self.family!r}")
        if not self.name.isidentifier() or self.name in _RESERVED:
            raise ValueError(f"method {self.name!r}: the name must be an identifier other than {sorted(_RESERVED)}")
        if self.options is not None and not dataclasses.is_dataclass(self.options):
            raise ValueError(f"method {self.name!r}: options must be a dataclass, not {self.options!r}")
        if isinstance(self.masks, str) and self.masks not in FEATURE_MASKS:
            raise ValueError(f"method {self.name!r}: masks must be one of {FEATURE_MASKS} or a callable")
        if self.masks == "positions" and "positions" not in _field_names(self.options):
            raise ValueError(f"method {self.name!r}: masks='positions' needs a 'positions' option")

    def implementation(self) -> Any:
        """The loss object, importing it on first use when it is given as ``"module:attribute"``."""
        if isinstance(self.loss, str):
            module, _, attr = self.loss.partition(":")
            return getattr(importlib.import_module(module), attr)
        if self.loss is None:
            raise ConfigError(f"kd.{self.family}.method={self.name}: the method has no implementation")
        return self.loss


# keys of a family section that are not method names
_RESERVED = frozenset(
    {"method", "mode", "weight", "schedule", "alpha", "temperature", "positions", "teacher_conf", "auto"}
)
_REGISTRY: dict[str, dict[str, Method]] = {f: {} for f in FAMILIES}


def _field_names(cls: type | None) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} if cls is not None else set()


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add a method to the registry (``replace`` to redefine one); returns it."""
    known = _REGISTRY[method.family]
    if method.name in known and not replace:
        raise ValueError(f"kd.{method.family}.method={method.name} is already registered (replace=True redefines it)")
    known[method.name] = method
    return method


def unregister_method(family: str, name: str) -> None:
    """Remove a method (tests that register a toy one clean up with this)."""
    _REGISTRY[family].pop(name, None)


def methods(family: str) -> tuple[Method, ...]:
    """The registered methods of a family, in registration order."""
    _load_builtins()
    return tuple(_REGISTRY[family].values())


def method_names(family: str) -> tuple[str, ...]:
    return tuple(m.name for m in methods(family))


def get_method(family: str, name: str) -> Method:
    """The method ``kd.<family>.method=<name>``; a ``ConfigError`` naming the valid ones when there is none."""
    _load_builtins()
    try:
        return _REGISTRY[family][name]
    except KeyError:
        raise ConfigError(
            f"kd.{family}.method: '{name}' is not a registered method; choose from {', '.join(method_names(family))}"
        ) from None


def _load_builtins() -> None:
    importlib.import_module("detkd.config.builtin_methods")  # registers detkd's own methods once


def filled_options(family: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every registered method's options of a family: ``given`` ones kept, the others at their defaults."""
    out: dict[str, Any] = {}
    for m in methods(family):
        if m.options is not None:
            out[m.name] = given[m.name] if m.name in given else m.options()
    unknown = set(given) - set(out)
    if unknown:
        raise ConfigError(f"kd.{family}: no method with options named {sorted(unknown)}")
    return out
