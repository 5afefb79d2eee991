"""The end-to-end demo on detkd's own synthetic data (no downloads, no weights needed).

Generates the dataset, trains a teacher (YOLOv8s), a baseline student (YOLOv8n) and a KD student (YOLOv8n) with
the same epochs, seed and data, evaluates all three with pycocotools, exports the KD student to ONNX and OpenVINO INT8
and gates each export against PyTorch, and writes ``report.md``, ``report.json`` and ``report.png``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from detkd.config import KDConfig, load_kd_config
from detkd.data.synthetic import SceneConfig, generate_dataset

LOGGER = logging.getLogger(__name__)
# What the demo exports the KD student to (OpenVINO INT8 is skipped, with a note, where OpenVINO is not installed)
EXPORT_FORMATS = ("onnx", "openvino-int8")


@dataclass
class DemoConfig:
    """Demo settings; the defaults fit in about 15 minutes on 2 CPU cores.

    Attributes:
        out: output folder (data, runs, report).
        seed: data and training seed.
        quick: a tiny run (about 2 minutes on 2 CPU cores) that only proves the pipeline.
        threads: torch CPU threads (default: all cores).
    """

    out: Path = Path("demo_out")
    seed: int = 0
    quick: bool = False
    threads: int | None = None
    teacher: str = "yolov8s.yaml"
    student: str = "yolov8n.yaml"
    scenes: SceneConfig = field(default_factory=lambda: SceneConfig(n_train=400, n_val=120, size=160, min_size=6.0))
    epochs: int = 15  # this 2-core machine's speed varies by a third: on its slowest day 18 epochs took 907 s
    imgsz: int = 160
    batch: int = 16
    kd_overrides: tuple[str, ...] = ()

    def effective(self) -> DemoConfig:
        if not self.quick:
            return self
        return DemoConfig(
            out=self.out,
            seed=self.seed,
            quick=True,
            threads=self.threads,
            teacher=self.teacher,
            student=self.student,
            scenes=SceneConfig(n_train=16, n_val=8, size=64, min_size=5.0),
            epochs=1,
            imgsz=64,
            batch=8,
            kd_overrides=self.kd_overrides,
        )


class _Stages:
    """Prints numbered stage headers with elapsed time."""

    def __init__(self, total: int) -> None:
        self.total, self.n, self.t0 = total, 0, time.time()
        self.times: dict[str, float] = {}
        self._last: tuple[str, float] | None = None

    def start(self, key: str, name: str) -> None:
        self._close()
        self.n += 1
        print(f"\n[detkd demo {self.n}/{self.total}] {name}  (elapsed {time.time() - self.t0:.0f}s)", flush=True)
        self._last = (key, time.time())

    def _close(self) -> None:
        if self._last:
            self.times[self._last[0]] = round(time.time() - self._last[1], 1)
            self._last = None

    def finish(self) -> float:
        self._close()
        return time.time() - self.t0


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["role"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=120)
    w = 0.38
    a = ax.bar([i - w / 2 for i in x], [r["mAP50-95"] for r in rows], w, label="mAP50-95", color="#3b6ea8")
    b = ax.bar([i + w / 2 for i in x], [r["mAP50"] for r in rows], w, label="mAP50", color="#9cc3e6")
    ax.bar_label(a, fmt="%.3f", fontsize=8)
    ax.bar_label(b, fmt="%.3f", fontsize=8)
    ax.set_xticks(list(x), [f"{lbl}\n{r['params_m']:.2f}M params" for lbl, r in zip(labels, rows, strict=True)])
    ax.set_ylabel("COCO mAP (val)")
    ax.set_title("detkd demo: synthetic scenes")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_ylim(0, max(1e-3, max(r["mAP50"] for r in rows)) * 1.25)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _markdown(report: dict[str, Any]) -> str:
    from detkd.export import gate_verdict

    rows = report["models"]
    kd = report["kd_effect"]
    exp = report["export"]
    lines = [
        "# detkd demo report",
        "",
        f"Synthetic scenes (seed {report['seed']}: {report['data']['train_images']} train / "
        f"{report['data']['val_images']} val images, {report['data']['image_size']} px, 6 classes), "
        f"{report['epochs']} epochs at imgsz {report['imgsz']}, batch {report['batch']}, same seed for every model.",
        "",
        "| model | role | params | mAP50-95 | mAP50 | AP small | CPU latency (PyTorch, batch 1) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        aps = "n/a" if r["APs"] is None else f"{r['APs']:.3f}"
        lines.append(
            f"| {r['model']} | {r['role']} | {r['params_m']:.2f} M | {r['mAP50-95']:.3f} | {r['mAP50']:.3f} | "
            f"{aps} | {r['latency_ms']:.1f} ms |"
        )
    gap = kd["gap_closed"]
    lines += [
        "",
        "## What KD did on this run",
        "",
        f"KD student minus baseline: **{kd['delta_map50_95']:+.3f} mAP50-95** ({kd['delta_map50']:+.3f} mAP50); "
        f"teacher minus baseline: {kd['teacher_gap']:+.3f} mAP50-95"
        + (f"; fraction of the gap closed: {gap:.2f}." if gap is not None else "."),
        "",
        kd["verdict"],
        "",
        f"KD recipe: {report['kd_recipe']}",
        "",
        "## KD student exported and checked",
        "",
        "Each export runs in its own runtime on the val split; the gate compares its COCO mAP with PyTorch's.",
        "",
        "| format | runtime | mAP50-95 | Δ vs PyTorch (points) | model call ms (median, batch 1) | size MB | gate |",
        "|---|---|---|---|---|---|---|",
        f"| pytorch | torch | {exp['pytorch']['map']['mAP50-95']:.3f} | | "
        f"{exp['pytorch']['latency']['inference']['median_ms']:.1f} | {exp['pytorch']['size_mb']:.1f} | reference |",
        *(
            f"| {r['format']} | {r['runtime']} | {r['map']['mAP50-95']:.3f} | {r['gate']['delta_points']:+.2f} | "
            f"{r['latency']['inference']['median_ms']:.1f} | {r['size_mb']:.1f} | "
            f"{gate_verdict(r['passed'], r['gate'])} |"
            for r in exp["rows"]
            if not r["skipped"]
        ),
        "",
        f"Bundles (model, labels, metadata, standalone `infer.py`): `{exp['out']}`",
        "",
        f"Wall time: {report['wall_time_s']:.0f} s on {report['environment']['machine']} "
        f"({report['threads']} threads); stages: "
        + ", ".join(f"{k} {v:.0f}s" for k, v in report["stage_seconds"].items()),
        "",
        f"detkd {report['environment']['detkd']} (commit {report['environment']['commit']}), "
        f"Ultralytics {report['environment']['ultralytics']}, torch {report['environment']['torch']}.",
        "",
        "![mAP of teacher, baseline and KD student](report.png)",
        "",
    ]
    return "\n".join(lines)


def _verdict(delta: float) -> str:
    if delta > 0.005:
        return (
            "KD improved the student on this run. One seed only: differences of about 0.01 mAP can come from seed "
            "noise at this budget; `benchmarks/` holds multi-seed comparisons."
        )
    if delta < -0.005:
        return (
            "KD did not help on this run (the KD student is below the baseline). One seed only: differences of about "
            "0.01 mAP can come from seed noise at this budget; `benchmarks/` holds multi-seed comparisons."
        )
    return "KD made no measurable difference on this run (within 0.005 mAP50-95 of the baseline)."


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the whole demo; returns the report dict (also written to ``out/report.json``)."""
    from detkd.data.dataset import load_data_spec
    from detkd.engine.distiller import Distiller, train_detector
    from detkd.eval.coco import evaluate
    from detkd.eval.predict import TorchPredictor
    from detkd.eval.report import write_eval_report
    from detkd.export import export_models
    from detkd.export.checks import measure_latency
    from detkd.students import ultralytics_yolo as uy
    from detkd.utils.device import set_cpu_threads
    from detkd.utils.environment import run_environment
    from detkd.utils.files import check_writable

    cfg = cfg.effective()
    out = cfg.out.resolve()
    check_writable(out)
    stages = _Stages(6)
    kd_cfg: KDConfig = load_kd_config(None, list(cfg.kd_overrides))
    # val=False: Ultralytics validates only after the last epoch, so the reported model is the final one (not the
    # epoch that scored best on the very split it is reported on) and no time goes to per-epoch validation.
    train: dict[str, Any] = {
        "epochs": cfg.epochs,
        "imgsz": cfg.imgsz,
        "batch": cfg.batch,
        "seed": cfg.seed,
        "device": "cpu",
        "val": False,
    }
    runs = out / "runs"

    stages.start("data", "Generating synthetic scenes")
    data_root = generate_dataset(out / "data", cfg.scenes, seed=cfg.seed)
    data_yaml = data_root / "data.yaml"
    spec = load_data_spec(data_yaml)

    stages.start("teacher", f"Training the teacher ({cfg.teacher})")
    teacher = train_detector(
        cfg.teacher, spec, project=runs, name="teacher", exist_ok=True, threads=cfg.threads, **train
    )

    stages.start("baseline", f"Training the baseline student ({cfg.student}, no KD)")
    baseline = train_detector(
        cfg.student, spec, project=runs, name="baseline", exist_ok=True, threads=cfg.threads, **train
    )

    stages.start("kd", f"Distilling the teacher into the student ({cfg.student}, KD: {kd_cfg.describe()})")
    kd_run = Distiller(teacher.best, cfg.student, spec, kd_cfg).train(
        project=runs, name="kd", exist_ok=True, threads=cfg.threads, **train
    )

    stages.start("eval", "Evaluating all three with pycocotools (COCO mAP) and timing them on CPU")
    threads = set_cpu_threads(cfg.threads)
    rows: list[dict[str, Any]] = []
    for role, run, arch in (
        ("teacher", teacher, cfg.teacher),
        ("baseline", baseline, cfg.student),
        ("KD student", kd_run, cfg.student),
    ):
        model = uy.load_detection_model(run.best)
        pred = TorchPredictor(model, "cpu")
        res = evaluate(pred, spec, "val", imgsz=cfg.imgsz)
        write_eval_report(res, run.save_dir / "eval_val", f"{role}: {arch}")
        rows.append(
            {
                "role": role,
                "model": arch.replace(".yaml", ""),
                "weights": str(run.best),
                "params_m": uy.count_parameters(model) / 1e6,
                "mAP50-95": res.map50_95,
                "mAP50": res.map50,
                "APs": res.metrics["APs"],
                "latency_ms": measure_latency(pred, cfg.imgsz, runs=30).median_ms,
                "train_seconds": round(run.wall_time_s, 1),
            }
        )

    stages.start("export", f"Exporting the KD student ({', '.join(EXPORT_FORMATS)}) and gating each against PyTorch")
    exp = export_models(
        kd_run.best, list(EXPORT_FORMATS), imgsz=cfg.imgsz, data=data_yaml, out_dir=out / "kd_student_export",
        threads=cfg.threads, latency_runs=30, calib_images=200, skip_unavailable=True,
    )  # fmt: skip

    wall = stages.finish()
    t, b, k = (float(r["mAP50-95"]) for r in rows)
    teacher_gap = t - b
    report = {
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "imgsz": cfg.imgsz,
        "batch": cfg.batch,
        "quick": cfg.quick,
        "threads": threads,
        "data": {
            "root": str(data_root),
            "train_images": cfg.scenes.n_train,
            "val_images": cfg.scenes.n_val,
            "image_size": cfg.scenes.size,
            "generator": asdict(cfg.scenes),
        },
        "models": rows,
        "kd_recipe": kd_cfg.describe(),
        "kd_config": kd_cfg.to_dict(),
        "kd_effect": {
            "delta_map50_95": k - b,
            "delta_map50": float(rows[2]["mAP50"]) - float(rows[1]["mAP50"]),
            "teacher_gap": teacher_gap,
            "gap_closed": (k - b) / teacher_gap if teacher_gap > 0.005 else None,
            "verdict": _verdict(k - b),
        },
        "export": {"out": str(out / "kd_student_export"), **exp.to_dict()},
        "stage_seconds": stages.times,
        "wall_time_s": round(wall, 1),
        "environment": run_environment(),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    _plot(rows, out / "report.png")
    (out / "report.md").write_text(_markdown(report))
    print(f"\n{_markdown(report)}")
    print(f"detkd demo finished in {wall:.0f} s ({wall / 60:.1f} min). Report: {out / 'report.md'}", flush=True)
    return report
