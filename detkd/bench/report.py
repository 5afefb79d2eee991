"""Benchmark reports: one Markdown + PNG per result file, and ``benchmarks/RESULTS.md`` gathering all of them.

``RESULTS.md`` is generated (``detkd bench report``) from the JSON results; the reading of each result is written by
a person in ``<result stem>.notes.md`` beside it and included verbatim, so regenerating never loses it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUN_LABELS = {
    "baseline": "baseline (no KD)",
    "ultralytics-kd": "Ultralytics built-in KD (dis=6.0)",
    "detkd-feature": "detkd: feature only",
    "detkd-logit": "detkd: logit only",
    "detkd-box": "detkd: box only",
    "detkd": "detkd: recommended (all three)",
    "detkd-online-lb": "detkd: logit + box, live teacher",
    "detkd-offline": "detkd: logit + box from a teacher cache",
    "detkd-offline-box": "detkd: box only from a teacher cache",
    "detkd-unlabeled-soft": "detkd: cache + unlabeled images (soft)",
    "detkd-unlabeled-hard": "detkd: cache + unlabeled (soft + pseudo-labels)",
    "detkd-crossmodal": "detkd: cache of the other modality's teacher view",
    "detkd-relation": "detkd: relation KD (feature) + logit + box",
    "detkd-self": "detkd: self-distillation (own EMA, no teacher)",
    "detkd-born-again": "detkd: born-again (KD run, then 1 generation)",
    "detkd-ta": "detkd: teacher -> assistant -> student",
    "detkd-mutual": "detkd: mutual learning with a teacher-sized peer",
}


def _f(v: float | None, fmt: str = ".4f", signed: bool = False) -> str:
    if v is None:
        return "–"
    return format(v, ("+" if signed else "") + fmt)


def _pm(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "–"
    return _f(stat["mean"]) + (f" ± {stat['std']:.4f}" if stat["std"] is not None else "")


def _environment_lines(payload: dict[str, Any]) -> list[str]:
    env = payload["environment"]
    device = payload.get("device_name") or payload["device"]
    cores = f", {env.get('cpu_cores')} cores" if payload["device"] == "cpu" else ""
    return [
        f"- command: `{env.get('command')}`",
        f"- device: {device}{cores}; commit {env.get('commit')}; detkd {env.get('detkd')}, Ultralytics "
        f"{env.get('ultralytics')}, torch {env.get('torch')}, Python {env.get('python')}",
        f"- date {payload.get('date')}, wall time {payload['wall_s'] / 60:.1f} min",
    ]


def quality_markdown(payload: dict[str, Any], plot: str | None = None, heading: str = "#") -> str:
    """The Markdown report of one quality benchmark."""
    s, t, summary = payload["suite"], payload["teacher"], payload["summary"]
    seeds = ", ".join(map(str, payload["seeds"]))
    lines = [
        f"{heading} Quality: `{s['name']}`: {s['description']}",
        "",
        *_environment_lines(payload),
        f"- budget: {s['epochs']} epochs, imgsz {s['imgsz']}, batch {s['batch']}, seeds {seeds} (same data for "
        f"every seed); extra training arguments {s['train_args'] or 'none'}"
        + (f", students only {s['student_train_args']}" if s.get("student_train_args") else "")
        + f"; KD overrides {list(s['kd']) or 'none'}",
        f"- teacher `{s['teacher']}` ({t.get('source')}; {_f(t.get('params'), ',.0f')} params): mAP50-95 "
        f"{_f(t.get('mAP50-95'))}, mAP50 {_f(t.get('mAP50'))}; student `{s['student']}`",
        *_scarce_lines(payload),
        *_cache_lines(payload),
        "",
        "| run | mAP50-95 (mean ± std) | mAP50 | gain vs baseline [95% CI] | seeds better | gap closed "
        "| APs / APm / APl | train s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run, row in summary.items():
        gain = row.get("gain")
        if gain and gain["mean"] is not None:
            ci = f" [{_f(gain['ci_low'], signed=True)}, {_f(gain['ci_high'], signed=True)}]" if gain["std"] else ""
            gain_txt = _f(gain["mean"], signed=True) + ci
            won = f"{row['seeds_won']}/{gain['n']}"
        else:
            gain_txt, won = "", ""
        gap = "" if row.get("gap_closed") is None else f"{row['gap_closed'] * 100:.0f}%"
        aps = " / ".join(_f(row[k]["mean"], ".3f") for k in ("APs", "APm", "APl"))
        mem = row["peak_gpu_mb"] if row.get("peak_gpu_mb") is not None else row["peak_rss_mb"]
        lines.append(
            f"| {RUN_LABELS.get(run, run)} | {_pm(row['mAP50-95'])} | {_pm(row['mAP50'])} | {gain_txt} | {won} | "
            f"{gap} | {aps} | {_f(row['train_s'], '.0f')} | {_f(mem, '.0f')} |"
        )
    lines += [
        "",
        "Gain: paired by seed (same data, init and order per seed). Gap closed: (run - baseline) / (teacher - "
        "baseline) on mAP50-95. The final model of each run is scored (no per-epoch selection on the val split).",
    ]
    lines += _scheme_lines(summary)
    lines += [f"\n**Warning:** {w}" for w in payload.get("warnings") or []]
    if plot:
        lines += ["", f"![mAP50-95 per run]({plot})"]
    return "\n".join(lines) + "\n"


def _scheme_lines(summary: dict[str, Any]) -> list[str]:
    """The schemes against plain KD from the same teacher, with what each costs in training."""
    rows = [(run, row) for run, row in summary.items() if row.get("vs_kd")]
    if not rows:
        return []
    kd_s = (summary.get("detkd") or {}).get("train_s")
    out = [
        "",
        "| scheme | vs plain KD [95% CI] | seeds better | train s (x plain KD) | gain vs baseline per training hour |",
        "|---|---|---|---|---|",
    ]
    for run, row in rows:
        vs = row["vs_kd"]
        ci = f" [{_f(vs['ci_low'], signed=True)}, {_f(vs['ci_high'], signed=True)}]" if vs["std"] else ""
        ratio = f" ({row['train_s'] / kd_s:.2f}x)" if kd_s and row.get("train_s") else ""
        per_h = _f(row.get("gain_per_hour"), signed=True)
        out.append(f"| {RUN_LABELS.get(run, run)} | {_f(vs['mean'], signed=True)}{ci} | "
                   f"{row['seeds_won_vs_kd']}/{vs['n']} | {_f(row['train_s'], '.0f')}{ratio} | {per_h} |")  # fmt: skip
    kd = summary.get("detkd") or {}
    if kd.get("gain_per_hour") is not None:
        out.append(f"| {RUN_LABELS['detkd']} (reference) | | | {_f(kd_s, '.0f')} | "
                   f"{_f(kd['gain_per_hour'], signed=True)} |")  # fmt: skip
    out += [
        "",
        "vs plain KD: paired by seed against `detkd` (the recommended recipe from the same teacher, same epochs per "
        "run). Training time counts every run a scheme trains (born-again and assistant chains train two).",
    ]
    return out


def plot_quality(payload: dict[str, Any], path: Path) -> None:
    """Bar chart: mAP50-95 per run (mean, std bars, per-seed dots), teacher and baseline as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = payload["summary"]
    runs = list(summary)
    fig, ax = plt.subplots(figsize=(7.2, 3.8), dpi=120)
    means = [summary[r]["mAP50-95"]["mean"] or 0.0 for r in runs]
    stds = [summary[r]["mAP50-95"]["std"] or 0.0 for r in runs]
    colors = ["#9a9a9a" if r == "baseline" else "#c98b3a" if r == "ultralytics-kd" else "#3b6ea8" for r in runs]
    ax.bar(range(len(runs)), means, yerr=stds, color=colors, capsize=3)
    for i, r in enumerate(runs):
        vals = list(summary[r]["per_seed"].values())
        ax.scatter([i] * len(vals), vals, s=10, color="black", zorder=3)
    teacher = payload["teacher"].get("mAP50-95")
    if teacher is not None:
        ax.axhline(teacher, color="#2a8a4a", linestyle="--", linewidth=1, label=f"teacher {teacher:.3f}")
    if summary.get("baseline", {}).get("mAP50-95", {}).get("mean") is not None:
        ax.axhline(summary["baseline"]["mAP50-95"]["mean"], color="#9a9a9a", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(runs)), [RUN_LABELS.get(r, r).replace(": ", ":\n").replace(" (", "\n(") for r in runs],
                  fontsize=7)  # fmt: skip
    ax.set_ylabel("COCO mAP50-95 (val)")
    ax.set_title(f"{payload['suite']['name']}: {len(payload['seeds'])} seed(s), {payload.get('device_name')}",
                 fontsize=9)  # fmt: skip
    top = max([teacher or 0.0, *(m + d for m, d in zip(means, stds, strict=True))])
    ax.set_ylim(0, max(top * 1.15, 0.01))
    if teacher is not None:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def render_quality(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    """Recompute a quality result's summary from its jobs (the single source of truth) and rewrite its ``.md`` and
    ``.png`` beside ``path``; returns the payload with the fresh summary."""
    from detkd.bench.stats import summarize

    payload = {**payload, "summary": summarize(payload["jobs"], payload["teacher"], payload["runs"], payload["seeds"])}
    plot_quality(payload, path.with_suffix(".png"))
    path.with_suffix(".md").write_text(quality_markdown(payload, plot=path.with_suffix(".png").name))
    return payload


def _scarce_lines(payload: dict[str, Any]) -> list[str]:
    s = payload["suite"]
    out = []
    if s.get("labelled_fraction"):
        out.append(f"- students see the labels of {s['labelled_fraction']:.3g} of the train images (seeded draw; "
                   "the rest are their unlabeled images); the teacher trained on every label")  # fmt: skip
    if s.get("paired"):
        out.append("- the teacher trained on the first modality; the students train and are scored on the second")
    return out


def _cache_lines(payload: dict[str, Any]) -> list[str]:
    """The teacher cache a result used (built by the benchmark): its size, build time and soft boxes per image."""
    c = payload.get("cache_build")
    if not c:
        return []
    per = c["soft_boxes"] / max(c["images"], 1)
    reused = c.get("new_images") == 0
    built = "reused (built by an earlier run of the suite)" if reused else f"built in {c['seconds']:.1f} s"
    per_k = c["mib"] / max(c["images"], 1) * 1000
    cells = f", {c['score_cells'] / max(c['images'], 1):.0f} score cells per image" if "score_cells" in c else ""
    return [f"- teacher cache: {c['images']} images, {c['soft_boxes']} soft boxes ({per:.1f} per image){cells}, "
            f"{c['mib']:.2f} MiB ({per_k:.1f} MiB per 1,000 images), {built}"]  # fmt: skip


def speed_markdown(payload: dict[str, Any], heading: str = "#") -> str:
    """The Markdown report of one speed benchmark."""
    cfg = payload["config"]
    lines = [
        f"{heading} Speed: `{cfg['suite']}` step time, {payload.get('device_name') or payload['device']}",
        "",
        *_environment_lines(payload),
        f"- one training step (forward, loss, backward, optimizer) at batch {cfg['batch']}, imgsz {cfg['imgsz']}; "
        f"teacher `{cfg['teacher']}`, student `{cfg['student']}`; {cfg['reps']} interleaved repetitions of "
        f"{cfg['steps']} steps after {cfg['warmup']} warm-up steps, one process; median per step; ratios are "
        "medians of per-repetition ratios (variants of a repetition run back to back)",
        *_cache_lines(payload),
        "",
        "| variant | s / step (median) | spread (min–max of reps) | vs floor | vs plain student | CPU s / step "
        "| CPU vs floor | GFLOP / step | FLOPs vs floor | peak memory MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in payload["variants"].values():
        mem = row.get("peak_gpu_mb") if row.get("peak_gpu_mb") is not None else row.get("peak_rss_mb")
        lines.append(
            f"| {row['label']} | {row['median_s']:.4f} | {row['min_s']:.4f}–{row['max_s']:.4f} | "
            f"{row['vs_floor']:.3f} | {row['vs_plain']:.3f} | {_f(row.get('cpu_median_s'), '.4f')} | "
            f"{_f(row.get('cpu_vs_floor'), '.3f')} | {_f(row.get('gflops'), '.2f')} | "
            f"{_f(row.get('flops_vs_floor'), '.3f')} | {_f(mem, '.0f')} |"
        )
    lines += [
        "",
        "Floor: one teacher forward pass under no_grad, then the student's own step (the least any KD can cost; "
        "detkd's variants run their teacher first too, as its trainer does). "
        "CPU s: this process's CPU time per step over all its threads (time other processes held the cores is "
        "left out). FLOPs: convolutions and matrix products of one step, forward and backward "
        "(`torch.utils.flop_counter`; elementwise work is not counted), the same on every machine. "
        "Memory on CPU is each variant's peak resident memory in a process of its own; on a GPU, peak allocated "
        "CUDA memory. A dash: not measured by the version of detkd that recorded the result.",
    ]
    return "\n".join(lines) + "\n"


def _missing_suites(files: list[Path]) -> list[str]:
    """Lines naming the suites that have no recorded quality result yet."""
    from detkd.bench.suites import SUITES

    done = {json.loads(p.read_text())["suite"]["name"] for p in files if p.name.startswith("quality_")}
    missing = [name for name in SUITES if name not in done]
    if not missing:
        return []
    cmds = ", ".join(f"`detkd bench quality --suite {name}`" for name in missing)
    return [f"Not recorded yet: {cmds}.", ""]


def write_results_md(results_dir: Path, out: Path) -> Path:
    """Regenerate ``RESULTS.md`` from every ``quality_*.json`` and ``speed_*.json`` in ``results_dir``."""
    rel = Path(results_dir.name) if out.parent.resolve() == results_dir.parent.resolve() else results_dir
    parts = [
        "# detkd benchmark results",
        "",
        "Generated by `detkd bench report` from the JSON files in `benchmarks/results/`; every number was measured "
        "by `detkd bench` with the command shown. Each reading below it was written by the person who ran it "
        "(`<result>.notes.md`).",
        "",
    ]
    files = sorted(results_dir.glob("quality_*.json")) + sorted(results_dir.glob("speed_*.json"))
    parts += _missing_suites(files)
    files += sorted(results_dir.glob("cache_format_*.json")) + sorted(results_dir.glob("vedai_crossmodal_*.json"))
    files += sorted(results_dir.glob("eval_vs_yolo_val_*.json"))
    for path in files:
        payload = json.loads(path.read_text())
        if payload.get("kind") == "quality":
            payload = render_quality(payload, path)
            body = quality_markdown(payload, plot=str(rel / path.with_suffix(".png").name), heading="##")
        elif path.name.startswith("cache_format_"):
            body = cache_format_markdown(payload, heading="##")
        elif path.name.startswith("vedai_crossmodal_"):
            body = vedai_markdown(payload, heading="##")
        elif path.name.startswith("eval_vs_yolo_val_"):
            body = eval_agreement_markdown(payload, heading="##")
        else:
            body = speed_markdown(payload, heading="##")
        parts += [body, f"Raw: [`{rel / path.name}`]({rel / path.name})", ""]
        notes = path.with_suffix(".notes.md")
        if notes.is_file():
            parts += ["**Reading.**", "", notes.read_text().strip(), ""]
    for path in sorted(results_dir.glob("offline_*.md")):  # measured with detkd's CLI, written up by hand
        parts += [path.read_text().strip().replace("\n# ", "\n## ", 1).replace("# ", "## ", 1), ""]
    out.write_text("\n".join(parts))
    return out


def eval_agreement_markdown(payload: dict[str, Any], heading: str = "#") -> str:
    """``detkd eval`` beside ``yolo val`` (``benchmarks/eval_vs_yolo_val.py``)."""
    env = payload.get("environment", {})
    lines = [
        f"{heading} `detkd eval` vs `yolo val`: {Path(str(payload['data'])).name}, {Path(str(payload['model'])).name}",
        "",
        f"- command: `{payload.get('command', '')}` (commit {payload.get('commit', '?')}; "
        f"{env.get('cpu') or env.get('device') or 'CPU'}); batch {payload.get('batch')}",
        "",
        "| | imgsz | letterbox | Ultralytics mAP50-95 | Ultralytics mAP50 | pycocotools AP | pycocotools AP50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in payload["rows"].items():
        cells = [
            row.get(k) for k in ("ultralytics mAP50-95", "ultralytics mAP50", "pycocotools AP", "pycocotools AP50")
        ]
        text = " | ".join("" if v is None else f"{v:.6f}" for v in cells)
        lines.append(f"| {name} | {row.get('imgsz')} | {row.get('letterbox')} | {text} |")
    lines += ["", *[f"- {k}: {v:+.2g}" for k, v in payload.get("summary", {}).items()], ""]
    return "\n".join(lines)


def cache_format_markdown(payload: dict[str, Any], heading: str = "#") -> str:
    """The teacher-cache format comparison (``benchmarks/cache_format.py``)."""
    n, boxes = payload["images"], payload["boxes"]
    cells = f", {payload['cells'] / max(n, 1):.0f} score cells per image" if "cells" in payload else ""
    lines = [
        f"{heading} Teacher cache format: size and random access ({payload['date']})",
        "",
        f"- command: `python benchmarks/cache_format.py {payload['cache']}`; {n} images, {boxes} soft boxes "
        f"({boxes / max(n, 1):.1f} per image){cells}, {payload['classes']} classes, reg_max {payload['reg_max']}; "
        f"{payload['reads']} reads of one image's rows and their payload, in random order, page cache warm",
        "",
        "| format | MiB per 1,000 images | files | open s | read µs per image |",
        "|---|---|---|---|---|",
    ]
    for name, r in payload["formats"].items():
        lines.append(f"| {name} | {r['mib_per_1000_images']:.2f} | {r['files']} | {r['open_s']:.3f} | "
                     f"{r['read_us_per_image']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def vedai_markdown(payload: dict[str, Any], heading: str = "#") -> str:
    """The VEDAI RGB -> near-infrared smoke run (``benchmarks/vedai_crossmodal.py``)."""
    r = payload["results"]

    def m(key: str) -> str:
        return f"{_f(r[key].get('AP'))} / {_f(r[key].get('AP50'))}"

    lines = [
        f"{heading} Cross-modal smoke run: VEDAI RGB teacher -> near-infrared student ({payload['date']})",
        "",
        f"- command: `python benchmarks/vedai_crossmodal.py --epochs {payload['epochs']} --imgsz {payload['imgsz']}`; "
        f"device {payload['device']}, commit {payload['commit']}; 83 train / 6 val aligned pairs, seed 0",
        f"- teacher cache (the teacher sees each scene's RGB image): {r['cache']['images']} images, "
        f"{r['cache']['soft_boxes']} soft boxes, built in {r['cache']['seconds']:.0f} s",
        "",
        "| model | scored on | mAP50-95 / mAP50 | train s |",
        "|---|---|---|---|",
        f"| YOLOv8s teacher (trained on RGB) | RGB val | {m('teacher_on_rgb')} | {r['teacher']['seconds']:.0f} |",
        f"| the same teacher | NIR val | {m('teacher_on_nir')} | |",
        f"| YOLOv8n student, no KD | NIR val | {m('baseline_on_nir')} | {r['baseline']['seconds']:.0f} |",
        f"| YOLOv8n student, KD from the RGB teacher's cache | NIR val | {m('kd_on_nir')} | {r['kd']['seconds']:.0f} |",
    ]
    return "\n".join(lines) + "\n"
