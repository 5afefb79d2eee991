"""``detkd bench speed``: seconds per training step of every KD variant, in one process, interleaved.

Variants (all the same student, data, batch and optimizer):

* ``plain``: the student's own step (forward, detection loss, backward, optimizer);
* ``floor``: ``plain`` plus one teacher forward under ``no_grad``: the least any KD method can cost;
* ``detkd-feature``, ``detkd-logit``, ``detkd-box``, ``detkd``: detkd's criterion with one family, or the recipe;
* ``ultralytics-kd``: Ultralytics' built-in ``DistillationModel`` (``dis=6.0``), when the teacher is Ultralytics.

Every variant runs ``steps`` steps per repetition, variants take turns (the order rotates each repetition), and
the median over repetitions is reported, so drifts of the machine (clock, other load) hit every variant alike.
Peak memory is measured per variant in a process of its own (``python -m detkd.bench.speed --probe``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from detkd.bench.suites import BUILTIN_KD_ARGS, FAMILY_ONLY, Suite

VARIANTS = ("plain", "floor", "detkd-feature", "detkd-logit", "detkd-box", "detkd", "detkd-cache", "ultralytics-kd")
LABELS = {
    "plain": "plain student (no teacher)",
    "floor": "floor: student step + teacher forward",
    "detkd-feature": "detkd: feature only",
    "detkd-logit": "detkd: logit only",
    "detkd-box": "detkd: box only",
    "detkd": "detkd: recommended (all three)",
    "detkd-cache": "detkd: logit + box from a teacher cache (no teacher run)",
    "ultralytics-kd": "Ultralytics built-in KD",
}


@dataclass
class SpeedConfig:
    """What the speed benchmark measures."""

    suite: str
    data: str
    teacher: str
    student: str
    imgsz: int
    batch: int
    kd: tuple[str, ...]
    class_map: str | None
    device: str = "cpu"
    steps: int = 4
    reps: int = 7
    warmup: int = 2
    variants: tuple[str, ...] = VARIANTS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Context:
    """Data, hyperparameters and batches shared by every variant."""

    def __init__(self, cfg: SpeedConfig) -> None:
        from ultralytics.cfg import get_cfg
        from ultralytics.data import build_dataloader, build_yolo_dataset
        from ultralytics.utils import DEFAULT_CFG

        from detkd.data.checked_dataset import checked_labels
        from detkd.data.checks import split_report
        from detkd.data.dataset import load_data_spec
        from detkd.utils.device import set_cpu_threads, torch_device_name

        self.cfg = cfg
        self.device = torch.device(torch_device_name(cfg.device))
        if self.device.type == "cpu":
            set_cpu_threads(None)
        self.spec = load_data_spec(cfg.data)
        overrides = {"imgsz": cfg.imgsz, "batch": cfg.batch, "data": cfg.data, **BUILTIN_KD_ARGS}
        self.args = cast(Any, get_cfg(DEFAULT_CFG, overrides))  # an IterableSimpleNamespace at run time
        data = {**self.spec.to_ultralytics(), "channels": 3}
        samples = split_report(self.spec, "train").samples
        self.cache: Any = None
        self.cache_build: dict[str, Any] | None = None
        soft = self._cache(samples) if "detkd-cache" in cfg.variants else None
        with checked_labels(samples, soft=soft):  # no label cache read or written
            ds = build_yolo_dataset(self.args, data["train"], cfg.batch, data, mode="train")
        loader = build_dataloader(ds, cfg.batch, workers=0, shuffle=False, device=self.device)
        from detkd.data.soft_labels import split_soft

        # every variant takes the same batches; the soft boxes (if any) ride along, unused but by detkd-cache
        self.batches = [
            self._to_device(split_soft(b) if soft else b) for b, _ in zip(loader, range(cfg.steps), strict=False)
        ]
        self.amp = self.device.type == "cuda"

    def _cache(self, samples: list[Any]) -> Any:
        """A teacher cache of the training images, in a temporary folder, timed (``cache_build``). Its threshold is
        low (0.001: up to 100 boxes and every anchor as a score cell), so the measured step is the costly end of what
        a cache gives."""
        import tempfile

        from detkd.offline.build import build_cache
        from detkd.offline.cache import TeacherCache
        from detkd.offline.source import SoftLabelSource
        from detkd.utils.files import file_digest

        folder = Path(tempfile.mkdtemp(prefix="detkd-speed-cache-")) / "cache"
        images = [s.image for s in samples]
        built = build_cache(self.teacher(), self.cfg.teacher, images, folder, imgsz=self.cfg.imgsz,
                            names=self.spec.names, conf=0.001, max_det=100, batch=self.cfg.batch,
                            device=self.device, progress=False)  # fmt: skip
        self.cache_build = {"images": built.images, "soft_boxes": built.boxes, "score_cells": built.cells,
                            "seconds": round(built.seconds, 2),
                            "mib": round(built.bytes / 2**20, 3),
                            "images_per_s": round(built.images / max(built.seconds, 1e-9), 1)}  # fmt: skip
        self.cache = TeacherCache(folder)
        return SoftLabelSource(self.cache, {str(s.train_path): file_digest(s.image) for s in samples})

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = {k: (v.to(self.device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
        out["img"] = out["img"].float() / 255
        return out

    def student(self) -> Any:
        from detkd.bench.quality import student_yaml
        from detkd.students import ultralytics_yolo as uy
        from detkd.utils.rng import seeded

        with seeded(0):
            model = uy.build_student(student_yaml(self.cfg.student, Path(self.cfg.data).parent), self.spec.nc,
                                     self.spec.names)  # fmt: skip
        model.args = self.args
        return model.to(self.device).train()

    def teacher(self) -> Any:
        from detkd.teachers import build_teacher
        from detkd.teachers.mapped import paired_classes
        from detkd.utils.rng import seeded

        with seeded(0):  # a teacher built from YAML: identical random weights in every variant
            t = build_teacher(
                self.cfg.teacher, nc=self.spec.nc, names=self.spec.names, allow_random=True
            )  # timing only
        return paired_classes(t, self.spec.names, self.cfg.class_map, required=False).to(self.device)


@dataclass
class _Variant:
    """One way of taking a training step."""

    name: str
    loss: Callable[[dict[str, Any]], Tensor]
    params: list[nn.Parameter]
    keep: tuple[Any, ...] = ()  # objects the closure needs alive


def _raw_net(teacher: Any) -> nn.Module:
    """The teacher's network itself (no output decoding): what the floor runs."""
    return getattr(teacher, "model", teacher)


def build_variant(name: str, ctx: _Context) -> _Variant:
    """Set up one variant: its own student copy (same initial weights), loss closure and trainable parameters."""
    if name not in VARIANTS:
        raise ValueError(f"unknown speed variant {name!r}; valid: {', '.join(VARIANTS)}")
    student = ctx.student()
    if name == "plain":
        return _Variant(name, lambda b: student.loss(b)[0], list(student.parameters()), (student,))
    if name == "floor":
        net = _raw_net(ctx.teacher())

        def floor_loss(b: dict[str, Any]) -> Tensor:
            with torch.no_grad():
                net(b["img"])
            return student.loss(b)[0]

        return _Variant(name, floor_loss, list(student.parameters()), (student, net))
    if name == "ultralytics-kd":
        from ultralytics.nn.distill_model import DistillationModel

        from detkd.students import ultralytics_yolo as uy

        teacher_net = copy.deepcopy(_raw_net(ctx.teacher())).float()
        uy.detect_head(teacher_net)  # an Ultralytics teacher, or a clear error
        dm = DistillationModel(teacher_model=teacher_net, student_model=student).to(ctx.device)
        dm.train()
        return _Variant(name, lambda b: dm.loss(b)[0], [p for p in dm.parameters() if p.requires_grad], (dm,))
    from detkd.config import load_kd_config
    from detkd.engine.criterion import KDCriterion
    from detkd.engine.distiller import build_composite

    if name == "detkd-cache":
        from detkd.offline.teacher import CachedTeacher
        from detkd.students import ultralytics_yolo as uy

        teacher: Any = CachedTeacher(ctx.cache, uy.feature_specs(student)).to(ctx.device)
        kd = load_kd_config(None, [*ctx.cfg.kd, "kd.feature.weight=0"])
        composite = build_composite(kd, student, teacher, ctx.spec.nc).to(ctx.device)
        teacher.use_distributions = composite.box_method == "ld"
    else:
        teacher = ctx.teacher()
        kd = load_kd_config(None, [*ctx.cfg.kd, *FAMILY_ONLY[name]])
        composite = build_composite(kd, student, teacher, ctx.spec.nc).to(ctx.device)
    criterion = KDCriterion(student, teacher, composite)
    criterion.start_epoch(0, 1, 1_000_000)
    student.criterion = criterion
    params = list(student.parameters()) + [p for p in composite.parameters() if p.requires_grad]

    def kd_loss(b: dict[str, Any]) -> Tensor:
        criterion.run_teacher(b)  # as KDTrainer.preprocess_batch does: the teacher before the student
        return student.loss(b)[0]

    return _Variant(name, kd_loss, params, (student, teacher, composite))


class _Stepper:
    """One variant's optimizer, gradient scaler and step (Ultralytics' recipe: SGD, clip at 10, AMP on GPU)."""

    def __init__(self, variant: _Variant, ctx: _Context) -> None:
        self.v, self.ctx = variant, ctx
        self.opt = torch.optim.SGD(variant.params, lr=1e-3, momentum=0.937, nesterov=True)
        self.scaler = torch.amp.GradScaler("cuda", enabled=ctx.amp)

    def step(self, i: int) -> None:
        batch = self.ctx.batches[i % len(self.ctx.batches)]
        with torch.autocast(self.ctx.device.type, enabled=self.ctx.amp):
            loss = self.v.loss(batch).sum()
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.v.params, max_norm=10.0)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.opt.zero_grad(set_to_none=True)


@dataclass
class Timings:
    """Per variant, one value per repetition: wall seconds per step, and this process's CPU seconds per step (all
    threads; on a shared machine it leaves out the time other processes held the cores), plus the FLOPs of one
    step (convolutions and matrix products, forward and backward, as ``torch.utils.flop_counter`` counts them)."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    flops: dict[str, int]


def step_flops(stepper: _Stepper) -> int:
    """FLOPs of one training step of ``stepper`` (deterministic: machine load does not change it). Elementwise work
    (activations, most of a loss, the optimizer update) is not counted, so this is a floor on the work."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        stepper.step(0)
    return int(counter.get_total_flops())


def time_variants(ctx: _Context, names: tuple[str, ...], log: Callable[[str], None] = print) -> Timings:
    """Time each variant's steps, interleaved (order rotated per repetition), then count one step's FLOPs."""
    cfg = ctx.cfg
    steppers = {n: _Stepper(build_variant(n, ctx), ctx) for n in names}
    for s in steppers.values():
        for i in range(cfg.warmup):
            s.step(i)
    out = Timings({n: [] for n in names}, {n: [] for n in names}, {})
    order = list(names)
    for rep in range(cfg.reps):
        for n in order:
            _sync(ctx.device)
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(cfg.steps):  # the same batches, in the same order, for every variant and repetition
                steppers[n].step(i)
            _sync(ctx.device)
            out.wall[n].append((time.perf_counter() - t0) / cfg.steps)
            out.cpu[n].append((time.process_time() - c0) / cfg.steps)
        log(f"rep {rep + 1}/{cfg.reps}: " + ", ".join(f"{n} {out.wall[n][-1]:.3f}s" for n in names))
        order = order[1:] + order[:1]
    out.flops = {n: step_flops(steppers[n]) for n in names}
    return out


def probe_memory(cfg: SpeedConfig, name: str) -> dict[str, float | None]:
    """Peak memory of one variant alone in this process, while it takes steps (setup and imports excluded:
    resident memory is sampled during the steps; on a GPU, peak allocated CUDA memory over the steps)."""
    ctx = _Context(cfg)
    stepper = _Stepper(build_variant(name, ctx), ctx)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    with RssSampler() as rss:
        for i in range(cfg.warmup + cfg.steps):
            stepper.step(i)
    gpu = torch.cuda.max_memory_allocated(ctx.device) / 2**20 if ctx.device.type == "cuda" else None
    return {"peak_rss_mb": round(rss.peak_mb, 1), "peak_gpu_mb": None if gpu is None else round(gpu, 1)}


class RssSampler:
    """Samples this process's resident memory (Linux ``/proc/self/statm``) in a thread; ``peak_mb`` is the max."""

    def __init__(self, interval_s: float = 0.002) -> None:
        import os
        import threading

        self.interval_s, self.peak_mb = interval_s, 0.0
        self._page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        with open("/proc/self/statm") as f:
            self.peak_mb = max(self.peak_mb, int(f.read().split()[1]) * self._page_mb)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _memory_in_subprocess(cfg: SpeedConfig, name: str, work: Path) -> dict[str, Any]:
    spec = work / f"speed_probe_{name}.json"
    spec.write_text(json.dumps(asdict(cfg)))
    out = subprocess.run(
        [sys.executable, "-m", "detkd.bench.speed", "--probe", name, str(spec)], capture_output=True, text=True
    )
    if out.returncode != 0:
        return {"peak_rss_mb": None, "peak_gpu_mb": None, "error": out.stderr.strip().splitlines()[-1:]}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


@contextlib.contextmanager
def _quiet_ultralytics() -> Iterator[None]:
    from ultralytics.utils import LOGGER as UL

    level = UL.level
    UL.setLevel("WARNING")
    try:
        yield
    finally:
        UL.setLevel(level)


def speed_config(suite: Suite, data_yaml: Path, **kw: Any) -> SpeedConfig:
    """The speed benchmark's settings for a suite (its data, models, image size and batch)."""
    from detkd.bench.suites import builtin_kd_applies

    cfg = SpeedConfig(suite=suite.name, data=str(data_yaml), teacher=suite.teacher_spec(), student=suite.student,
                      imgsz=suite.imgsz, batch=suite.batch, kd=tuple(suite.kd),
                      class_map=suite.class_map_path())  # fmt: skip
    for k, v in kw.items():
        if v is not None:
            setattr(cfg, k, v)
    if not builtin_kd_applies(suite):
        cfg.variants = tuple(v for v in cfg.variants if v != "ultralytics-kd")
    return cfg


def _paired_ratio(values: list[float], ref: list[float] | None) -> float:
    """Median of per-repetition ratios (the variants of one repetition ran back to back); NaN without ``ref``."""
    return statistics.median(a / b for a, b in zip(values, ref, strict=True)) if ref else float("nan")


def run_speed(cfg: SpeedConfig, work: Path, memory: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Time every variant and measure its memory; returns the result payload (ratios to the floor and plain)."""
    from detkd.utils.environment import run_environment

    started = time.time()
    with _quiet_ultralytics():
        ctx = _Context(cfg)
        timings = time_variants(ctx, cfg.variants, log)
    work.mkdir(parents=True, exist_ok=True)
    variants: dict[str, Any] = {}
    for n, t in timings.wall.items():
        cpu, flops = timings.cpu[n], timings.flops[n]
        row: dict[str, Any] = {"label": LABELS[n], "median_s": statistics.median(t), "min_s": min(t), "max_s": max(t),
                               "reps_s": t, "cpu_median_s": statistics.median(cpu), "cpu_reps_s": cpu,
                               "gflops": flops / 1e9}  # fmt: skip
        for ref in ("floor", "plain"):
            row[f"vs_{ref}"] = _paired_ratio(t, timings.wall.get(ref))
            row[f"cpu_vs_{ref}"] = _paired_ratio(cpu, timings.cpu.get(ref))
            row[f"flops_vs_{ref}"] = flops / timings.flops[ref] if timings.flops.get(ref) else float("nan")
        if memory:
            log(f"memory: {n}")
            row.update(_memory_in_subprocess(cfg, n, work))
        variants[n] = row
    env = run_environment()
    return {
        "kind": "speed",
        "config": asdict(cfg),
        "device": cfg.device,
        "device_name": env["cuda"] if cfg.device != "cpu" else env["cpu"],
        "threads": torch.get_num_threads() if cfg.device == "cpu" else None,
        "environment": env,
        "variants": variants,
        "cache_build": ctx.cache_build,
        "wall_s": round(time.time() - started, 1),
        "date": time.strftime("%Y-%m-%d"),
    }


def main(argv: list[str] | None = None) -> int:
    """Memory probe entry point: ``python -m detkd.bench.speed --probe VARIANT CONFIG.json``."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 3 or args[0] != "--probe":
        print("usage: python -m detkd.bench.speed --probe VARIANT CONFIG.json", file=sys.stderr)
        return 2
    raw = json.loads(Path(args[2]).read_text())
    raw.update(kd=tuple(raw["kd"]), variants=tuple(raw["variants"]))
    with _quiet_ultralytics():
        print(json.dumps(probe_memory(SpeedConfig(**raw), args[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
