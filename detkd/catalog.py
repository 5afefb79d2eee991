"""The catalog of KD methods: what ``detkd losses`` prints and what the docs' KD config reference is made of.

Each method names its family, paper, formula, when to use it, and the config sub-section holding its options; the
options and their defaults are read from the config dataclasses themselves, so the listing cannot drift from the
code (a test checks that docs/recipe.md holds exactly :func:`render_markdown`'s output).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from detkd import config as C


@dataclass(frozen=True)
class MethodInfo:
    """One selectable method."""

    family: str
    name: str
    paper: str
    formula: str
    use: str
    options: type | None = None


METHODS: tuple[MethodInfo, ...] = (
    MethodInfo(
        "feature",
        "mse",
        "FitNets (Romero et al., ICLR 2015); masks as in Wang et al. (CVPR 2019)",
        "sum_hw m * mean_c (A(s) - t)^2 / sum_hw m",
        "default; ground-truth-box mask (`positions: gt`) keeps the background from dominating",
        C.MSEOptions,
    ),
    MethodInfo(
        "feature",
        "fine_grained",
        "Wang et al., Distilling Object Detectors with Fine-grained Feature Imitation, CVPR 2019",
        "mse on cells whose prior boxes overlap a ground-truth box by > thresh * its best IoU",
        "imitation near objects only, with a neighbourhood that adapts to each object's size",
        C.FineGrainedOptions,
    ),
    MethodInfo(
        "feature",
        "fgd",
        "Yang et al., Focal and Global Knowledge Distillation for Detectors, CVPR 2022",
        "alpha*fg + beta*bg (teacher spatial/channel attention weighted) + gamma*attention L1 + lambda*GcBlock "
        "relation",
        "separates foreground and background and weights both by the teacher's attention; dense scenes",
        C.FGDOptions,
    ),
    MethodInfo(
        "feature",
        "cwd",
        "Shu et al., Channel-wise Knowledge Distillation for Dense Prediction, ICCV 2021",
        "tau^2 / C * sum_c KL(softmax_hw(t_c / tau) || softmax_hw(A(s)_c / tau))",
        "matches where each channel fires rather than its magnitude; no mask needed",
        C.CWDOptions,
    ),
    MethodInfo(
        "feature",
        "mgd",
        "Yang et al., Masked Generative Distillation, ECCV 2022",
        "mean (G(A(s) * random_mask) - t)^2, G = conv3x3-ReLU-conv3x3",
        "the student must generate the teacher's map from a masked copy of its own; regularising",
        C.MGDOptions,
    ),
    MethodInfo(
        "feature",
        "pkd",
        "Cao et al., PKD: General Distillation Framework for Object Detectors via Pearson "
        "Correlation Coefficient, NeurIPS 2022",
        "1/2 * mean (std_c(A(s)) - std_c(t))^2 = 1 - Pearson r per channel",
        "teachers of another family or scale (magnitude-invariant)",
        C.PKDOptions,
    ),
    MethodInfo(
        "logit",
        "bce",
        "Hinton et al. 2015, per class as binary distributions for sigmoid heads; BCKD weighting "
        "(Yang et al., ICCV 2023)",
        "T^2 * sum_c KL(Bern(sig(t_c/T)) || Bern(sig(s_c/T))) [* |p_t - p_s|^gamma]",
        "default; YOLO heads score classes with independent sigmoids",
        C.BCEOptions,
    ),
    MethodInfo(
        "logit",
        "kl",
        "Hinton et al., Distilling the Knowledge in a Neural Network, 2015",
        "T^2 * KL(softmax_c(t/T) || softmax_c(s/T)) per anchor",
        "for comparison; ignores objectness, so use it with `positions: teacher`",
    ),
    MethodInfo(
        "box",
        "ld",
        "Zheng et al., Localization Distillation for Dense Object Detection, CVPR 2022",
        "T^2 / 4 * sum_edges KL(softmax(t_edge / T) || softmax(s_edge / T)) over DFL bins",
        "YOLOv8/11 heads (reg_max > 1) with the same bins as the teacher; `auto` picks it then",
        C.LDOptions,
    ),
    MethodInfo(
        "box",
        "iou",
        "GIoU (Rezatofighi et al., CVPR 2019) to the teacher's decoded boxes",
        "(1 - GIoU(s, t)) + l1_weight * mean |s - t| / stride",
        "any head, including YOLO26 (no DFL) and mixed pairs; `auto` picks it when LD cannot apply",
        C.IoUOptions,
    ),
    MethodInfo(
        "box",
        "bounded_l2",
        "Chen et al., Learning Efficient Object Detection Models with Knowledge Distillation, NeurIPS 2017",
        "mean_edges (s - y)^2 where it + margin > mean_edges (t - y)^2, else 0 (y: ground truth)",
        "the teacher as an upper bound: keeps a weaker teacher's box errors out of the student",
        C.BoundedL2Options,
    ),
)

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
        if dataclasses.is_dataclass(value):
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
        for m in (m for m in METHODS if m.family == family):
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


def render_markdown() -> str:
    """The KD config reference of docs/recipe.md (between the ``kd-reference`` markers)."""
    out = ["| method | paper | loss | use it when |", "|---|---|---|---|"]
    for m in METHODS:
        out.append(f"| `{m.family}.method: {m.name}` | {m.paper} | `{_cell(m.formula)}` | {_cell(m.use)} |")
    out += ["", "| key | default | meaning |", "|---|---|---|"]
    for family, cls in FAMILIES.items():
        out += _md_options(f"kd.{family}", cls)
        for m in (m for m in METHODS if m.family == family and m.options):
            assert m.options is not None
            out += _md_options(f"kd.{family}.{m.name}", m.options)
    out += _md_options("kd.<family>.schedule", C.ScheduleConfig)
    out += _md_options("kd.balance", C.BalanceConfig)
    out += _md_options("kd.unlabeled", C.UnlabeledConfig)
    out += _md_options("kd.targets", C.SoftTargetsConfig)
    return "\n".join(out) + "\n"
