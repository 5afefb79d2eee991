"""Command line: ``detkd distill | train | eval | export | bench | demo | losses``.

Options mirror the Python API (``Distiller(...).train(epochs=..., imgsz=...)``). User errors print one line naming
the file and the problem and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from detkd._offline import ensure_offline
from detkd._version import __version__
from detkd.cli_pairs import expand_pairs, ultralytics_defaults
from detkd.errors import ConfigError, DetkdError, RunInterrupted

LOGGER = logging.getLogger("detkd")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _train_args(ns: argparse.Namespace) -> dict[str, Any]:
    from detkd.engine.train_args import check_train_args

    args: dict[str, Any] = {
        "epochs": ns.epochs,
        "imgsz": ns.imgsz,
        "batch": ns.batch,
        "device": ns.device,
        "seed": ns.seed,
        "workers": ns.workers,
    }
    extra: dict[str, Any] = {}
    for item in ns.train_arg or []:
        if "=" not in item:
            raise DetkdError(f"--train-arg {item!r}: expected KEY=VALUE, e.g. lr0=0.01")
        k, v = item.split("=", 1)
        try:
            value = yaml.safe_load(v)
            if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
                value = float(value)  # YAML 1.1 reads 1e-5 (no dot) as a string
            extra[k.strip()] = value
        except yaml.YAMLError as e:
            raise DetkdError(f"--train-arg {item!r}: the value is not valid YAML ({' '.join(str(e).split())})") from e
    check_train_args(extra, option_names=True)
    return {k: v for k, v in {**args, **extra}.items() if v is not None}


def _batch(text: str) -> int | float:
    """``--batch``: an integer (``-1``: AutoBatch) or a GPU-memory fraction like ``0.7``, as Ultralytics takes it;
    the ranges are checked with the other training arguments."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _add_training_options(p: argparse.ArgumentParser, name: str) -> None:
    """The options ``distill`` and ``train`` share. Each can also be written ``key=value`` (:mod:`detkd.cli_pairs`),
    as can any Ultralytics training argument (``lr0=0.01``) and, for distill, any KD option (``kd.logit.weight=2``)."""
    p.add_argument("--data", default=None, help="Ultralytics data YAML (required unless --resume)")
    ul = ultralytics_defaults()  # Ultralytics' own defaults, so that detkd trains as `yolo train` would
    p.add_argument("--epochs", type=int, default=ul.get("epochs", 100), help="epochs (default: %(default)s)")
    p.add_argument("--imgsz", type=int, default=ul.get("imgsz", 640), help="image size (default: %(default)s)")
    p.add_argument(
        "--batch",
        type=_batch,
        default=ul.get("batch", 16),
        help="images per batch (default: %(default)s); -1 or a fraction in (0, 1): Ultralytics' AutoBatch on a GPU",
    )
    p.add_argument("--device", default=None, help="cpu, 0, ... (default: a GPU when there is one)")
    p.add_argument("--seed", type=int, default=ul.get("seed", 0), help="training seed (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="dataloader workers (Ultralytics uses 0 on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument("--project", default="runs/detkd", help="runs are folders under it (default: %(default)s)")
    p.add_argument("--name", default=name, help="the run folder's name, numbered if taken (default: %(default)s)")
    p.add_argument("--exist-ok", action="store_true", help="reuse the run folder instead of numbering a new one")
    p.add_argument(
        "--bad-samples",
        choices=("skip", "fail"),
        default="skip",
        help="images that do not decode or have malformed labels: skip them with a warning each (default) or fail",
    )
    p.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue a killed run from its last complete epoch (only --device, --workers, --threads may change)",
    )
    p.add_argument(
        "--train-arg",
        action="append",
        metavar="KEY=VALUE",
        help="any other Ultralytics training argument, e.g. --train-arg lr0=0.01 (repeatable)",
    )


def _required(ns: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n}" for n in names if getattr(ns, n) is None]
    if missing:
        raise DetkdError(f"{ns.command}: {', '.join(missing)} required (or --resume RUN_DIR to continue a run)")


def _print_result(result: Any) -> None:
    from detkd.engine import distributed

    if distributed.is_main():
        out = {"save_dir": str(result.save_dir), "best": str(result.best), **result.metrics}
        if hasattr(result, "stages"):  # a chain: every stage's weights and metrics
            out["stages"] = [
                {k: s.get(k) for k in ("name", "weights", "metrics", "wall_time_s")} for s in result.stages
            ]
        print(json.dumps(out))


_RESUME_KEEPS = {"resume", "device", "workers", "threads", "quiet", "command", "func"}


def _resumed(ns: argparse.Namespace) -> Any:
    """``--resume RUN_DIR``: only --device, --workers and --threads may come with it; anything else would be
    silently ignored (the run continues as it was started), so it is refused."""
    from detkd.engine.resume import resume

    defaults = vars(build_parser().parse_args([ns.command]))
    given = sorted(k for k, v in vars(ns).items() if k not in _RESUME_KEEPS and v != defaults.get(k))
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise DetkdError(f"--resume continues {ns.resume} exactly as it was started: {flags} cannot be given with it "
                         "(only --device, --workers, --threads can)")  # fmt: skip
    from detkd.engine.schemes import is_chain, resume_chain

    if is_chain(ns.resume):
        return resume_chain(ns.resume, device=ns.device, workers=ns.workers, threads=ns.threads)
    return resume(ns.resume, device=ns.device, workers=ns.workers, threads=ns.threads)


def _cmd_chain(ns: argparse.Namespace) -> int:
    from detkd.engine.schemes import distill_chain

    if ns.teacher_cache is not None or ns.unlabeled or ns.peer:
        raise DetkdError("--assistant/--generations train every stage from a live teacher (no --teacher-cache, "
                         "--unlabeled or --peer)")  # fmt: skip
    _required(ns, *(("teacher",) if ns.assistant else ()), "student", "data")
    result = distill_chain(
        ns.teacher,
        ns.student,
        ns.data,
        ns.kd,
        assistants=ns.assistant,
        generations=ns.generations,
        overrides=ns.set,
        class_map=ns.class_map,
        allow_random_teacher=ns.allow_random_teacher,
        project=ns.project,
        name=ns.name,
        exist_ok=ns.exist_ok,
        threads=ns.threads,
        **_train_args(ns),
    )
    _print_result(result)
    return 0


def _cmd_distill(ns: argparse.Namespace) -> int:
    from detkd.engine.distiller import Distiller

    if ns.resume:
        _print_result(_resumed(ns))
        return 0
    if ns.assistant or ns.generations:
        return _cmd_chain(ns)
    if ns.teacher_cache is not None and ns.teacher is not None:
        raise DetkdError("distill: give --teacher or --teacher-cache, not both (the cache records its teacher)")
    _required(ns, *(("teacher",) if ns.teacher_cache is None and not ns.peer else ()), "student", "data")
    distiller = Distiller(
        ns.teacher,
        ns.student,
        ns.data,
        ns.kd,
        overrides=ns.set,
        class_map=ns.class_map,
        bad_samples=ns.bad_samples,
        teacher_cache=ns.teacher_cache,
        unlabeled=ns.unlabeled,
        allow_random_teacher=ns.allow_random_teacher,
        peers=ns.peer,
    )
    result = distiller.train(
        project=ns.project,
        name=ns.name,
        exist_ok=ns.exist_ok,
        threads=ns.threads,
        on_nonfinite=ns.on_nonfinite,
        **_train_args(ns),
    )
    _print_result(result)
    return 0


def _cmd_cache(ns: argparse.Namespace) -> int:
    from detkd.offline.build import cache_teacher

    result = cache_teacher(
        ns.teacher,
        data=ns.data,
        images=ns.images or [],
        unlabeled=ns.unlabeled or [],
        out=ns.out,
        imgsz=ns.imgsz,
        class_map=ns.class_map,
        conf=ns.conf,
        max_det=ns.max_det,
        max_cells=ns.max_cells,
        batch=ns.batch,
        device=ns.device,
        pair_dir=ns.pair_dir,
        threads=ns.threads,
        progress=not ns.quiet,
        allow_random_teacher=ns.allow_random_teacher,
    )
    print(json.dumps({"cache": str(result.folder), "images": result.images, "new_images": result.new_images,
                      "soft_boxes": result.boxes, "score_cells": result.cells, "seconds": round(result.seconds, 2),
                      "mib": round(result.bytes / 2**20, 3)}))  # fmt: skip
    return 0


def _cmd_losses(ns: argparse.Namespace) -> int:
    from detkd.catalog import render_markdown, render_text

    print(render_markdown() if ns.markdown else render_text(), end="")
    return 0


def _cmd_train(ns: argparse.Namespace) -> int:
    from detkd.engine.distiller import train_detector

    if ns.resume:
        _print_result(_resumed(ns))
        return 0
    _required(ns, "model", "data")
    result = train_detector(ns.model, ns.data, project=ns.project, name=ns.name, exist_ok=ns.exist_ok,
                            threads=ns.threads, bad_samples=ns.bad_samples, **_train_args(ns))  # fmt: skip
    _print_result(result)
    return 0


def _cmd_eval(ns: argparse.Namespace) -> int:
    from detkd.eval.api import evaluate_model

    result = evaluate_model(
        ns.model, ns.data, split=ns.split, imgsz=ns.imgsz, batch=ns.batch, conf=ns.conf, iou=ns.iou, rect=ns.rect,
        device=ns.device, threads=ns.threads, class_map=ns.class_map, bad_samples=ns.bad_samples,
        project=ns.project, name=ns.name, out=ns.out, plots=ns.plots,
    )  # fmt: skip
    print(json.dumps({"model": str(ns.model), "split": ns.split, **result.metrics,
                      "images_per_second": result.images_per_second, "yolo": {k: v for k, v in result.yolo.items()
                      if k != "per_class"}, "save_dir": result.save_dir}))  # fmt: skip
    return 0


def _cmd_export(ns: argparse.Namespace) -> int:
    from detkd.export import export_models
    from detkd.export.targets import targets_table

    if ns.list:
        for row in targets_table():
            print(f"{row['format']:<15} {row['precision']:<5} {row['runtime']:<12} {row['status']}")
        return 0
    if not ns.model:
        raise DetkdError("export: --model is required (or --list to see the formats)")
    table = export_models(
        ns.model, ns.format, imgsz=ns.imgsz, data=ns.data, split=ns.split, calib_split=ns.calib_split,
        calib_images=ns.calib_images, out_dir=ns.out, threads=ns.threads, latency_runs=ns.runs, budget=ns.budget,
        fallback=ns.fallback, skip_unavailable=ns.skip_unavailable, device=ns.device, end2end=ns.end2end,
        class_map=ns.class_map,
    )  # fmt: skip
    print(table.to_markdown())
    summary = {
        "passed": table.passed,
        "formats": {r.format: {"passed": r.passed, "bundle": r.bundle_dir, "skipped": r.skipped, "error": r.error,
                               "fallback_to": r.fallback_to, "gate": r.gate and r.gate["reason"]}
                    for r in table.rows},
    }  # fmt: skip
    print(json.dumps(summary))
    if not table.passed:
        failed = [r.gate["reason"] if r.gate else f"{r.format}: {r.error}" for r in table.rows
                  if not r.passed and not r.skipped and not r.fallback_to]  # fmt: skip
        LOGGER.error("export failed: %s", "; ".join(failed) or "a fallback did not pass")
        return 1
    return 0


def _cmd_demo(ns: argparse.Namespace) -> int:
    from detkd.demo import DemoConfig, run_demo

    cfg = DemoConfig(out=Path(ns.out), seed=ns.seed, quick=ns.quick, threads=ns.threads)
    if ns.epochs is not None:
        if ns.quick:
            raise ConfigError("--epochs applies to the full demo; --quick always trains one epoch")
        if ns.epochs < 1:
            raise ConfigError(f"--epochs {ns.epochs}: must be at least 1")
        cfg = dataclasses.replace(cfg, epochs=ns.epochs)
    report = run_demo(cfg)
    print(json.dumps(report))
    return 0


def _add_allow_random(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-random-teacher",
        action="store_true",
        help="accept an untrained teacher (a model YAML, a torchvision builder without weights): tests and smoke "
        "runs only; otherwise it is refused",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detkd", description="Knowledge distillation for Ultralytics YOLO detectors")
    parser.add_argument("--version", action="version", version=f"detkd {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors from detkd's logger")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "distill",
        help="train a student with knowledge distillation from a teacher",
        epilog="Ultralytics-style key=value works too, mixed with the options: detkd distill teacher=t.pt "
        "model=yolov8n.yaml data=d.yaml epochs=100 lr0=0.01 kd.logit.weight=2 (model= is the student; any "
        "Ultralytics training argument; kd.* keys: detkd losses)",
    )
    p.add_argument(
        "--teacher",
        default=None,
        help="Ultralytics YOLO or RT-DETR .pt (or YAML), a classic YOLOv5 .pt, torchvision:<builder>[:<weights>], "
        "an ensemble YAML, or 'self': the student's own EMA (self-distillation, no external model)",
    )
    p.add_argument(
        "--assistant",
        action="append",
        metavar="MODEL",
        help="a teacher assistant (YAML or .pt), largest first; repeatable: teacher -> assistant(s) -> student in "
        "one command, each stage a run folder inside --name",
    )
    p.add_argument(
        "--peer",
        action="append",
        metavar="MODEL",
        help="online mutual learning instead of a teacher: this model (YAML or .pt) trains together with the "
        "student from the start, each learning from the labels and the other (repeatable: more peers)",
    )
    p.add_argument(
        "--generations",
        type=int,
        default=0,
        metavar="N",
        help="born-again self-distillation: after the student, distil N fresh students of its architecture, each "
        "from the previous (generation 0 from --teacher, or from the labels without one)",
    )
    p.add_argument("--class-map", default=None, help="YAML mapping teacher classes to the data's (name or index)")
    _add_allow_random(p)
    p.add_argument("--student", default=None, help="student model YAML (e.g. yolov8n.yaml) or .pt")
    p.add_argument("--kd", default=None,
                   help="KD config YAML, or a shipped recipe: preset:offline, preset:unlabeled, preset:cross-family, "
                   "preset:logit-only, preset:online (default: detkd's recipe; preset:online with --teacher self "
                   "or --peer)")  # fmt: skip
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a KD setting, e.g. kd.feature.method=cwd or kd.logit.weight=2 (all keys: detkd losses)",
    )
    p.add_argument(
        "--on-nonfinite",
        choices=("stop", "skip"),
        default="stop",
        help="a NaN/Inf loss: stop (naming term, epoch, batch; default) or skip that optimizer step",
    )
    p.add_argument(
        "--teacher-cache",
        default=None,
        metavar="CACHE",
        help="train from a teacher cache (detkd cache) instead of a live teacher: logit and box KD, no teacher loaded",
    )
    p.add_argument(
        "--unlabeled",
        action="append",
        metavar="DIR",
        help="a folder or image list of unlabeled images (repeatable; adds to the data YAML's 'unlabeled' key); "
        "on them the student learns from the teacher only (kd.unlabeled.*)",
    )
    _add_training_options(p, "distill")
    p.set_defaults(func=_cmd_distill)

    p = sub.add_parser("cache", help="run a teacher once over images and keep its soft boxes for offline KD")
    p.add_argument("--teacher", required=True, help="any teacher detkd distils from (as for distill --teacher)")
    p.add_argument("--data", default=None, help="data YAML: its train (and unlabeled) images are cached")
    p.add_argument("--images", action="append", metavar="DIR", help="more images to cache: a folder or list")
    p.add_argument("--unlabeled", action="append", metavar="DIR", help="unlabeled images to cache (repeatable)")
    p.add_argument("--out", required=True, help="the cache folder (created; a partial cache of the same key resumes)")
    p.add_argument("--imgsz", type=int, default=640, help="the training image size the cache serves (default 640)")
    p.add_argument("--class-map", default=None, help="YAML mapping teacher classes to the data's")
    _add_allow_random(p)
    p.add_argument(
        "--conf", type=float, default=0.01, help="lowest class probability a soft box or score cell keeps (0.01)"
    )
    p.add_argument("--max-det", type=int, default=100, help="soft boxes kept per image (100)")
    p.add_argument(
        "--max-cells",
        type=int,
        default=None,
        help="score-field cells (the strongest anchors) kept per image, for logit KD (default 2000; 0: none)",
    )
    p.add_argument("--batch", type=int, default=16, help="images per inference batch (16)")
    p.add_argument("--device", default=None, help="cpu, 0, ... (default: a GPU when there is one)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    p.add_argument(
        "--pair-dir",
        default=None,
        help="the teacher sees another modality: its image of each scene is the file of the same stem in this folder",
    )
    p.set_defaults(func=_cmd_cache)

    p = sub.add_parser(
        "train",
        help="train a detector without KD (a teacher, or a baseline)",
        epilog="Ultralytics-style key=value works too: detkd train model=yolov8s.yaml data=d.yaml epochs=100 lr0=0.01",
    )
    p.add_argument("--model", default=None, help="model YAML or .pt")
    _add_training_options(p, "train")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "eval",
        help="COCO mAP of a model on a dataset split",
        description="COCO mAP (pycocotools) and Ultralytics' mAP of the same detections, at the checkpoint's "
        "training image size with Ultralytics' rectangular batches by default, as yolo val does.",
        epilog="Ultralytics-style key=value works too: detkd eval model=best.pt data=d.yaml imgsz=320",
    )
    p.add_argument("--model", required=True, help="checkpoint (.pt)")
    p.add_argument("--data", required=True, help="data YAML")
    p.add_argument("--split", default="val", help="split to score (default: %(default)s)")
    p.add_argument("--imgsz", type=int, default=None, help="inference size (default: the checkpoint's training size)")
    p.add_argument("--batch", type=int, default=16, help="images per inference batch (default: %(default)s)")
    p.add_argument("--conf", type=float, default=0.001, help="score threshold (default: %(default)s)")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU (default: %(default)s)")
    p.add_argument("--rect", action=argparse.BooleanOptionalAction, default=True,
                   help="Ultralytics' rectangular batches, as yolo val (default); --no-rect: square letterboxes, "
                   "as a static-shape export takes them")  # fmt: skip
    p.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                   help="PR/F1/P/R curves and confusion matrices in the report folder (default: on)")  # fmt: skip
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--project", default="runs/detkd", help="reports are folders under it (default: %(default)s)")
    p.add_argument("--name", default="eval", help="the report folder's name, numbered if taken (default: %(default)s)")
    p.add_argument("--out", default=None, help="report folder (default: a new PROJECT/NAME)")
    p.add_argument(
        "--class-map",
        default=None,
        help="YAML mapping the model's classes to the data's (a model trained on other classes, e.g. a COCO teacher)",
    )
    p.add_argument(
        "--bad-samples",
        choices=("skip", "fail"),
        default="skip",
        help="images that do not decode or have malformed labels: skip them with a warning each (default) or fail",
    )
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("export", help="export to edge formats, gate each against PyTorch, write deployment bundles")
    p.add_argument("--model", default=None, help="student weights (.pt)")
    p.add_argument(
        "--format", default="onnx", help="comma-separated targets, e.g. onnx,openvino,openvino-int8,ncnn (see --list)"
    )
    p.add_argument("--list", action="store_true", help="list every target and whether this machine can produce it")
    p.add_argument("--imgsz", type=int, default=None, help="default: the training image size")
    p.add_argument("--data", default=None, help="data YAML: mAP gate on --split, INT8 calibration on --calib-split")
    p.add_argument("--split", default="val", help="split the gate and the parity check run on")
    p.add_argument("--calib-split", default="train", help="split INT8 calibration images come from")
    p.add_argument("--calib-images", type=int, default=300, help="INT8 calibration images (at most)")
    p.add_argument("--class-map", default=None, help="YAML mapping the model's classes to the data's, for the gate")
    p.add_argument(
        "--budget",
        default=None,
        help="mAP50-95 points an export may lose: one number, or e.g. fp32=0.5,fp16=0.5,int8=1.5 (the defaults)",
    )
    p.add_argument(
        "--end2end",
        action="store_true",
        help="YOLO26: export the one-to-one head (NMS-free; boxes, score, class) where the format supports top-k",
    )
    p.add_argument("--fallback", action="store_true", help="when a target fails its gate, try the next precision up")
    p.add_argument(
        "--skip-unavailable", action="store_true", help="skip targets this machine cannot produce instead of failing"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every runtime (default: all cores)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per format (after 5 warm-up runs)")
    p.add_argument("--device", default="cpu", help="cpu, or a GPU index to build TensorRT engines on")
    p.add_argument("--out", default=None, help="output folder (default: <weights folder>/<stem>_export)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("losses", help="list every KD method with its options and defaults")
    p.add_argument("--markdown", action="store_true", help="print the KD config reference table (as in docs/recipe.md)")
    p.set_defaults(func=_cmd_losses)

    p = sub.add_parser("demo", help="end-to-end demo on synthetic data: teacher, baseline, KD student, report")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quick", action="store_true", help="a tiny run that only proves the pipeline (about 2 minutes on 2 CPU cores)"
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs of all three models (default: the budget that keeps the demo "
        "under 15 minutes on 2 cores; more raise every model's mAP and the run time proportionally)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=_cmd_demo)

    from detkd.bench.cli import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    ensure_offline()
    from detkd.engine import distributed

    parser = build_parser()
    try:
        argv = expand_pairs(parser, list(sys.argv[1:] if argv is None else argv))
    except DetkdError as e:
        print(f"detkd: error: {e}", file=sys.stderr)
        return 2
    ns = parser.parse_args(argv)
    main_rank = distributed.is_main()
    logging.basicConfig(
        level=logging.WARNING if ns.quiet or not main_rank else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if main_rank else f"[rank {distributed.rank()}] %(message)s",
        stream=sys.stderr,
    )
    if not main_rank:  # every rank checks the data; rank 0 alone reports what it found
        logging.getLogger("detkd.data").setLevel(logging.ERROR)
    try:
        return int(ns.func(ns))
    except DetkdError as e:
        print(f"detkd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"detkd: {_interrupted(ns.command, e)}", file=sys.stderr)
        return 130


def _interrupted(command: str, e: KeyboardInterrupt) -> str:
    """What Ctrl-C left: the command that resumes the run, or why there is nothing to resume."""
    from detkd.engine.checkpointing import RESUME_FILE

    folder = e.folder if isinstance(e, RunInterrupted) else None
    if folder is None:
        return "interrupted"
    if (folder / "weights" / RESUME_FILE).is_file():
        return f"interrupted; continue from the last complete epoch with: detkd {command} --resume {folder}"
    return f"interrupted before the first epoch ended: nothing was saved in {folder} (start the run again)"


if __name__ == "__main__":
    sys.exit(main())
