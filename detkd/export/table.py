"""The export table: one row per format (its files, gate, parity, latency, size, bundle), as Markdown and JSON."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from detkd._version import __version__

if TYPE_CHECKING:
    pass


LOGGER = logging.getLogger(__name__)


@dataclass
class FormatResult:
    """One exported target: where it is, how it did against PyTorch, how fast it runs."""

    format: str
    precision: str
    runtime: str
    hardware: str
    bundle_dir: str | None = None
    size_mb: float | None = None
    map: dict[str, float] | None = None  # this runtime's mAP50-95 / mAP50 on the gate split
    parity: dict[str, Any] | None = None
    latency: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    fallback_to: str | None = None  # the target tried because this one failed its gate
    skipped: str | None = None  # why this target was not produced (unavailable here; does not fail the table)
    error: str | None = None  # why its conversion or its checks failed (fails the table)

    @property
    def passed(self) -> bool:
        return bool(self.gate and self.gate["passed"])


@dataclass
class ExportTable:
    source: str
    imgsz: int
    data: str | None
    split: str
    calibration: dict[str, Any] | None
    threads: int | None
    pytorch: dict[str, Any]
    requested: list[str] = field(default_factory=list)
    rows: list[FormatResult] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    def row(self, name: str) -> FormatResult | None:
        return next((r for r in self.rows if r.format == name), None)

    def deployable(self, name: str) -> FormatResult | None:
        """The result that stands for ``name``: itself if it passed, else the end of its fallback chain."""
        r = self.row(name)
        while r is not None and not r.passed and r.fallback_to:
            r = self.row(r.fallback_to)
        return r

    @property
    def passed(self) -> bool:
        """Every requested format (or the format it fell back to) passed; skipped formats do not count."""
        results = [self.deployable(n) for n in self.requested]
        return all(r is not None and (r.passed or r.skipped) for r in results)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for row, r in zip(d["rows"], self.rows, strict=True):
            row["passed"] = r.passed
        d["passed"] = self.passed
        return d

    def to_markdown(self) -> str:
        pt = self.pytorch
        lines = [
            f"# Export of `{self.source}`",
            "",
            f"Input {self.imgsz}x{self.imgsz}, batch 1; parameters {pt['params_m']:.2f} M, {pt['gflops']:.2f} GFLOPs; "
            + (f"gate on `{self.data}` ({self.split} split)" if self.data else "no data: gated on raw outputs only"),
            "",
            "| format | precision | runtime | mAP50-95 | Δ vs PyTorch (points) | mAP50 | pre / model / NMS ms (median) "
            "| total ms median / p90 | size MB | gate |",
            "|---|---|---|---|---|---|---|---|---|---|",
            _row_md("pytorch", "fp32", "torch", pt.get("map"), None, pt["latency"], pt["size_mb"], "reference"),
        ]
        for r in self.rows:
            if r.skipped or r.error:
                why = f"skipped: {r.skipped}" if r.skipped else f"**ERROR**: {r.error}"
                lines.append(f"| {r.format} | {r.precision} | {r.runtime} | | | | | | | {why} |")
                continue
            verdict = gate_verdict(r.passed, r.gate)
            if r.fallback_to:
                verdict += f" → fell back to {r.fallback_to}"
            delta = r.gate.get("delta_points") if r.gate else None
            lines.append(_row_md(r.format, r.precision, r.runtime, r.map, delta, r.latency, r.size_mb, verdict))
        lines += ["", "Gate decisions:", ""] + [f"- {r.gate['reason']}" for r in self.rows if r.gate]
        if self.calibration:
            c = self.calibration
            lines += ["", f"INT8 calibration: up to {c['images']} images of the {c['split']} split."]
        env = self.environment
        lines += [
            "",
            f"Latency: batch 1, {self.threads or 'default'} CPU threads, median over the runs after warm-up; "
            "pre = letterbox + scaling, NMS at conf 0.25. Measured on "
            f"{env.get('cpu') or env.get('machine', '?')} ({env.get('cpu_cores')} cores); "
            f"detkd {env.get('detkd', __version__)} (commit {env.get('commit', '?')}), "
            f"Ultralytics {env.get('ultralytics', '?')}.",
            "",
        ]
        return "\n".join(lines)


def _row_md(
    name: str,
    precision: str,
    runtime: str,
    maps: dict[str, float] | None,
    delta: float | None,
    lat: dict[str, Any] | None,
    size: float | None,
    verdict: str,
) -> str:
    m = f"{maps['mAP50-95']:.4f}" if maps else ""
    m50 = f"{maps['mAP50']:.4f}" if maps else ""
    d = f"{delta:+.2f}" if delta is not None else ""
    stages = (
        f"{lat['preprocess']['median_ms']:.1f} / {lat['inference']['median_ms']:.1f} / "
        f"{lat['postprocess']['median_ms']:.1f}"
        if lat
        else ""
    )
    total = f"{lat['total']['median_ms']:.1f} / {lat['total']['p90_ms']:.1f}" if lat else ""
    mb = f"{size:.1f}" if size is not None else ""
    return f"| {name} | {precision} | {runtime} | {m} | {d} | {m50} | {stages} | {total} | {mb} | {verdict} |"


def gate_verdict(passed: bool, gate: dict[str, Any] | None) -> str:
    """``pass``, ``**FAIL**``, or ``**inconclusive**`` when nothing measured could have failed the export."""
    if passed:
        return "pass"
    return "**inconclusive**" if gate and not gate.get("conclusive", True) else "**FAIL**"
