"""The catalog of KD methods: what ``detkd losses`` prints and what the docs' KD config reference is made of.

Each registered method (:mod:`detkd.methods`) names its family, paper, formula, when to use it, and the config
sub-section holding its options; the options and their defaults are read from the config dataclasses themselves,
so the listing cannot drift from the code (tests check that docs/recipe.md holds exactly :func:`render_markdown`'s
output and the README :func:`render_method_table`'s).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from detkd import config as C
from detkd.methods import FAMILIES as FAMILY_NAMES
from detkd.methods import Method, methods


def all_methods() -> tuple[Method, ...]:
    """Every registered method, family by family (the registry, :mod:`detkd.methods`, is the source)."""
    return tuple(m for family in FAMILY_NAMES for m in methods(family))


FAMILIES: dict[str, type] = {"feature": C.FeatureKDConfig, "logit": C.LogitKDConfig, "box": C.BoxKDConfig}
SECTIONS: dict[str, type] = {
    **FAMILIES,
    "schedule": C.ScheduleConfig,
    "balance": C.BalanceConfig,
    "unlabeled": C.UnlabeledConfig,
    "targets": C.SoftTargetsConfig,
}


def attribute_docs(cls: type) -> dict[str, str]:
    """``name: text`` entries of a dataclass docstring's ``Attributes:`` block, joined across wrapped lines."""
    doc = cls.__doc__ or ""
    if "Attributes:" not in doc:
        return {}
    block = doc.split("Attributes:", 1)[1]
    docs: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        m = re.match(r"^\s{0,8}(\w+): (.*)$", line)
        if m and m.group(1) in {f.name for f in dataclasses.fields(cls)}:
            current = m.group(1)
            docs[current] = m.group(2).strip()
        elif current and line.strip():
            docs[current] += " " + line.strip()
    return {k: v.replace("``", "`") for k, v in docs.items()}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return None
    return list(value) if isinstance(value, tuple) else value


def options_of(cls: type) -> list[tuple[str, Any, str]]:
    """(name, default, description) of each scalar option of a config dataclass (nested sections skipped)."""
    docs = attribute_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        value = _default(f)
        if dataclasses.is_dataclass(value) or f.name == "method_options":
            continue
        out.append((f.name, value, docs.get(f.name, "")))
    return out


def _fmt(value: Any) -> str:
    return "null" if value is None else str(value)


def render_text() -> str:
    """The listing printed by ``detkd losses``."""
    lines = ["KD methods (choose one per family in the KD config; `--set kd.<family>.method=<name>`)", ""]
    for family, cls in FAMILIES.items():
        lines.append(f"[{family}] kd.{family}.*")
        for name, value, doc in options_of(cls):
            lines.append(f"  {name} = {_fmt(value)}    {doc}")
        for m in methods(family):
            lines += [f"  - {m.name}: {m.paper}", f"      L = {m.formula}", f"      use: {m.use}"]
            for name, value, doc in options_of(m.options) if m.options else []:
                lines.append(f"      kd.{family}.{m.name}.{name} = {_fmt(value)}    {doc}")
        lines.append("")
    for section, cls in (("schedule", C.ScheduleConfig), ("balance", C.BalanceConfig),
                         ("unlabeled", C.UnlabeledConfig), ("targets", C.SoftTargetsConfig)):  # fmt: skip
        where = "kd.<family>.schedule" if section == "schedule" else f"kd.{section}"
        lines.append(f"[{section}] {where}.*")
        for name, value, doc in options_of(cls):
            lines.append(f"  {name} = {_fmt(value)}    {doc}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _cell(text: str) -> str:
    """Table-cell text: pipes escaped (GitHub tables split on them, even inside code spans)."""
    return text.replace("|", "\\|")


def _md_options(prefix: str, cls: type) -> list[str]:
    return [f"| `{prefix}.{n}` | `{_fmt(v)}` | {_cell(d)} |" for n, v, d in options_of(cls)]


FAMILY_LABELS = {
    "feature": "feature imitation (neck maps; 1x1 adapters where values are compared)",
    "logit": "logit KD (class scores)",
    "box": "box KD",
}


def render_method_table() -> str:
    """The README's method table (between the ``methods`` markers): every registered method, the default first."""
    defaults = {family: cls().method for family, cls in FAMILIES.items()}
    out = ["| family | methods (the default first) |", "|---|---|"]
    for family in FAMILY_NAMES:
        names = [m.name for m in methods(family)]
        if defaults[family] not in names:  # box: auto picks ld or iou
            names.insert(0, defaults[family])
        names.sort(key=lambda n: n != defaults[family])
        out.append(f"| {FAMILY_LABELS.get(family, family)} | {', '.join(f'`{n}`' for n in names)} |")
    return "\n".join(out) + "\n"


def render_markdown() -> str:
    """The KD config reference of docs/recipe.md (between the ``kd-reference`` markers)."""
    out = ["| method | paper | loss | use it when |", "|---|---|---|---|"]
    for m in all_methods():
        out.append(f"| `{m.family}.method: {m.name}` | {m.paper} | `{_cell(m.formula)}` | {_cell(m.use)} |")
    out += ["", "| key | default | meaning |", "|---|---|---|"]
    for family, cls in FAMILIES.items():
        out += _md_options(f"kd.{family}", cls)
        for m in (m for m in methods(family) if m.options):
            assert m.options is not None
            out += _md_options(f"kd.{family}.{m.name}", m.options)
    out += _md_options("kd.<family>.schedule", C.ScheduleConfig)
    out += _md_options("kd.balance", C.BalanceConfig)
    out += _md_options("kd.unlabeled", C.UnlabeledConfig)
    out += _md_options("kd.targets", C.SoftTargetsConfig)
    return "\n".join(out) + "\n"
