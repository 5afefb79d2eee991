"""``detkd bench quality | speed | report``: the benchmark commands (added to ``detkd``'s parser)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from detkd.bench.suites import ALL_RUNS, SUITES
from detkd.errors import ConfigError

LOGGER = logging.getLogger("detkd")
RESULTS = Path("benchmarks") / "results"


def _suite(ns: argparse.Namespace) -> Any:
    from detkd.bench.suites import custom_suite, get_suite

    budget = {"epochs": ns.epochs, "teacher_epochs": ns.teacher_epochs, "imgsz": ns.imgsz, "batch": ns.batch}
    if ns.data:
        if not (ns.teacher and ns.student):
            raise ConfigError("bench with --data needs --teacher (YAML to train, or weights) and --student")
        return custom_suite(ns.data, ns.teacher, ns.student, class_map=ns.class_map, kd=tuple(ns.set or ()), **budget)
    if not ns.suite:
        raise ConfigError(f"bench: give --suite NAME ({', '.join(SUITES)}) or --data")
    suite = get_suite(ns.suite)
    kd = (*suite.kd, *(ns.set or ())) if ns.set else None
    return suite.with_overrides(teacher=ns.teacher, student=ns.student, class_map=ns.class_map, kd=kd, **budget)


def _seeds(ns: argparse.Namespace, default: tuple[int, ...]) -> tuple[int, ...]:
    if ns.seed_list:
        return tuple(ns.seed_list)
    if ns.seeds is None:
        return default
    if ns.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {ns.seeds}")
    return tuple(range(ns.seeds))


def _work(ns: argparse.Namespace, suite: Any) -> Path:
    return Path(ns.work) if ns.work else Path("runs") / "bench" / suite.name


def _cmd_quality(ns: argparse.Namespace) -> int:
    from detkd.bench.quality import Plan, QualityBench, write_quality
    from detkd.bench.suites import parse_runs

    suite = _suite(ns)
    if ns.parallel < 1:
        raise ConfigError(f"--parallel must be at least 1, got {ns.parallel}")
    plan = Plan(suite=suite, runs=parse_runs(ns.runs, suite), seeds=_seeds(ns, suite.seeds), device=ns.device,
                work=_work(ns, suite), out=Path(ns.out), parallel=ns.parallel,
                cache=Path(ns.cache) if ns.cache else None)  # fmt: skip
    LOGGER.info("bench quality %s: runs %s, seeds %s, device %s", suite.name, ", ".join(plan.runs), plan.seeds,
                plan.device)  # fmt: skip
    payload = QualityBench(plan).run(" ".join(["detkd", *sys.argv[1:]]))
    path = write_quality(payload, plan.out)
    print(path.with_suffix(".md").read_text())
    print(json.dumps({"result": str(path), "wall_s": payload["wall_s"]}))
    return 0


def _cmd_speed(ns: argparse.Namespace) -> int:
    from detkd.bench.quality import device_tag, prepare_data
    from detkd.bench.report import speed_markdown
    from detkd.bench.speed import VARIANTS, run_speed, speed_config

    suite = _suite(ns)
    variants = tuple(v.strip() for v in ns.variants.split(",")) if ns.variants else None
    if variants:
        bad = [v for v in variants if v not in VARIANTS]
        if bad:
            raise ConfigError(f"unknown speed variant(s) {bad}; valid: {', '.join(VARIANTS)}")
    for name in ("steps", "reps"):
        if getattr(ns, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(ns, name)}")
    work = _work(ns, suite)
    cfg = speed_config(suite, prepare_data(suite, work), device=ns.device, steps=ns.steps, reps=ns.reps,
                       warmup=ns.warmup, variants=variants)  # fmt: skip
    payload = run_speed(cfg, work, memory=not ns.no_memory, log=lambda m: LOGGER.info("%s", m))
    payload["environment"]["command"] = " ".join(["detkd", *sys.argv[1:]])
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"speed_{suite.name}_{device_tag(payload)}_{payload['date']}"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    md = speed_markdown(payload)
    stem.with_suffix(".md").write_text(md)
    print(md)
    print(json.dumps({"result": str(stem.with_suffix(".json"))}))
    return 0


def _cmd_report(ns: argparse.Namespace) -> int:
    from detkd.bench.report import write_results_md

    results = Path(ns.results)
    if not results.is_dir():
        raise ConfigError(f"bench report: results folder {results} not found")
    print(write_results_md(results, Path(ns.out) if ns.out else results.parent / "RESULTS.md"))
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", default=None, help=", ".join(SUITES))
    p.add_argument("--data", default=None, help="your own data YAML instead of a suite (needs --teacher, --student)")
    p.add_argument("--teacher", default=None, help="override: model YAML to train, or weights to use as given")
    p.add_argument("--student", default=None, help="override: the student model YAML")
    p.add_argument("--class-map", default=None, help="class-map YAML (teacher trained on other classes)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="KD override for every detkd run")
    p.add_argument("--epochs", type=int, default=None, help="override the students' epochs")
    p.add_argument("--teacher-epochs", type=int, default=None, help="override the teacher's epochs (when trained)")
    p.add_argument("--imgsz", type=int, default=None, help="override the suite's image size")
    p.add_argument("--batch", type=int, default=None, help="override the suite's batch size")
    p.add_argument("--device", default="cpu", help="cpu or a GPU index")
    p.add_argument("--work", default=None, help="work folder (default runs/bench/<suite>)")
    p.add_argument("--out", default=str(RESULTS), help="results folder (default benchmarks/results)")


def add_bench_parser(sub: Any) -> None:
    bench = sub.add_parser("bench", help="benchmarks: KD quality against the baseline and Ultralytics' KD, and speed")
    bsub = bench.add_subparsers(dest="bench_command", required=True)

    p = bsub.add_parser("quality", help="baseline vs Ultralytics KD vs detkd (each family, recipe) over seeds")
    _common(p)
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1; default: the suite's)")
    p.add_argument("--seed-list", type=int, nargs="+", default=None, help="explicit seeds instead of --seeds")
    p.add_argument("--runs", default=None, help=f"comma-separated subset of: {', '.join(ALL_RUNS)} (default: the "
                   "suite's runs)")  # fmt: skip
    p.add_argument("--parallel", type=int, default=1, help="jobs at once (cores are shared between them)")
    p.add_argument("--cache", default=None, help="teacher cache folder (default $DETKD_CACHE or ~/.cache/detkd)")
    p.set_defaults(func=_cmd_quality)

    p = bsub.add_parser("speed", help="seconds per training step of each KD variant vs the floor, interleaved")
    _common(p)
    p.add_argument("--variants", default=None, help="comma-separated subset (default: all that apply)")
    p.add_argument("--steps", type=int, default=5, help="steps per variant per repetition")
    p.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    p.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory processes")
    p.set_defaults(func=_cmd_speed)

    p = bsub.add_parser("report", help="regenerate benchmarks/RESULTS.md from the result files")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--out", default=None, help="default: RESULTS.md beside the results folder")
    p.set_defaults(func=_cmd_report)
