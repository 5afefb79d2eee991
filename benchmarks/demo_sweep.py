"""Multi-seed sweep of KD recipes at the demo's data and budget (used to choose the demo's defaults).

Runs, for each seed, the demo's teacher and baseline student and then one KD student per recipe, all through the
same code path as ``detkd demo`` (``train_detector`` / ``Distiller``), and scores every model with detkd's COCO
evaluator. Jobs run as parallel subprocesses (useful on a GPU machine). Writes ``sweep.json`` and ``sweep.md``.

    python benchmarks/demo_sweep.py --out /tmp/sweep --seeds 0 1 2 --device 0 --parallel 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

RECIPES: dict[str, list[str]] = {
    "all": [],
    "feat": ["logit.weight=0", "box.weight=0"],
    "logit": ["feature.weight=0", "box.weight=0"],
    "box": ["feature.weight=0", "logit.weight=0"],
    "all_teachermask": ["feature.mse.positions=teacher"],
    "all_x2": ["feature.weight=2", "logit.weight=2", "box.weight=2"],
    "all_a0.3_T1": ["logit.alpha=0.3", "logit.temperature=1"],
    "logit_a0.3_T1": ["feature.weight=0", "box.weight=0", "logit.alpha=0.3", "logit.temperature=1"],
    "nofeat_a0.3_T1": ["feature.weight=0", "logit.alpha=0.3", "logit.temperature=1"],
}


_ONLY_FEAT = ["logit.weight=0", "box.weight=0"]
_ONLY_LOGIT = ["feature.weight=0", "box.weight=0"]
_ONLY_BOX = ["feature.weight=0", "logit.weight=0"]

# The loss-library ablation: every method alone (its family's other terms off, default options), and combinations.
METHOD_RECIPES: dict[str, list[str]] = {
    "feat_mse": _ONLY_FEAT,
    "feat_fine_grained": [*_ONLY_FEAT, "feature.method=fine_grained"],
    "feat_fgd": [*_ONLY_FEAT, "feature.method=fgd"],
    "feat_cwd": [*_ONLY_FEAT, "feature.method=cwd"],
    "feat_mgd": [*_ONLY_FEAT, "feature.method=mgd"],
    "feat_pkd": [*_ONLY_FEAT, "feature.method=pkd"],
    "logit_bce": _ONLY_LOGIT,
    "logit_bce_bckd": [*_ONLY_LOGIT, "logit.bce.weighting=bckd"],
    "logit_bce_quality": [*_ONLY_LOGIT, "logit.bce.weighting=quality"],
    "logit_kl": [*_ONLY_LOGIT, "logit.method=kl", "logit.positions=teacher"],
    "box_ld": _ONLY_BOX,
    "box_iou": [*_ONLY_BOX, "box.method=iou"],
    "box_bounded_l2": [*_ONLY_BOX, "box.method=bounded_l2"],
    "all": [],
    "all_balance_loss": ["balance.mode=loss"],
    "all_balance_grad": ["balance.mode=grad"],
    "all_cwd": ["feature.method=cwd"],
    "all_pkd": ["feature.method=pkd"],
}

# The CPU ablation docs/recipe.md reports: each family alone with its default method, and the default combination.
ABLATION = {k: METHOD_RECIPES[k] for k in ("feat_mse", "logit_bce", "box_ld", "all")}

SUITES = {"recipes": RECIPES, "methods": METHOD_RECIPES, "ablation": ABLATION}
ALL_RECIPES = {**RECIPES, **METHOD_RECIPES}


def _kv(items: list[str] | None) -> dict:
    """KEY=VALUE strings -> dict with YAML-parsed values."""
    import yaml

    return {k: yaml.safe_load(v) for k, v in (i.split("=", 1) for i in items or [])}


def run_job(args: argparse.Namespace, kind: str, seed: int, recipe: str | None = None) -> dict:
    """One training + evaluation, in a subprocess so that jobs do not share torch state."""
    name = f"{kind}_s{seed}" + (f"_{recipe}" if recipe else "")
    result_file = Path(args.out) / "jobs" / f"{name}.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    cmd = [
        sys.executable,
        __file__,
        "--job",
        kind,
        "--seed",
        str(seed),
        "--out",
        args.out,
        "--device",
        args.device,
        "--epochs",
        str(args.epochs),
        "--imgsz",
        str(args.imgsz),
        "--batch",
        str(args.batch),
        "--n-train",
        str(args.n_train),
        "--n-val",
        str(args.n_val),
        "--workers",
        str(args.workers),
    ]
    if recipe:
        cmd += ["--recipe", recipe]
    for item in args.train_arg or []:
        cmd += ["--train-arg", item]
    for item in args.scene or []:
        cmd += ["--scene", item]
    log = Path(args.out) / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0 or not result_file.is_file():
        return {"name": name, "error": f"exit {rc}, see {log}", "seconds": time.time() - t0}
    return json.loads(result_file.read_text())


def job_main(args: argparse.Namespace) -> None:
    from detkd.data.dataset import load_data_spec
    from detkd.data.synthetic import generate_dataset
    from detkd.demo import DemoConfig
    from detkd.engine.distiller import Distiller, train_detector
    from detkd.eval.coco import evaluate
    from detkd.eval.predict import TorchPredictor
    from detkd.students import ultralytics_yolo as uy

    demo = DemoConfig()
    scenes = type(demo.scenes)(
        **{**demo.scenes.__dict__, "n_train": args.n_train, "n_val": args.n_val, **_kv(args.scene)}
    )
    out = Path(args.out)
    data_root = generate_dataset(out / f"data_s{args.seed}", scenes, seed=args.seed)
    spec = load_data_spec(data_root / "data.yaml")
    train = {
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "seed": args.seed,
        "device": args.device,
        "workers": args.workers,
        "verbose": False,
        **_kv(args.train_arg),
    }
    runs = out / "runs"
    t0 = time.time()
    if args.job == "teacher":
        res = train_detector(demo.teacher, spec, project=runs, name=f"teacher_s{args.seed}", exist_ok=True, **train)
        name = f"teacher_s{args.seed}"
    elif args.job == "baseline":
        res = train_detector(demo.student, spec, project=runs, name=f"baseline_s{args.seed}", exist_ok=True, **train)
        name = f"baseline_s{args.seed}"
    else:
        teacher = runs / f"teacher_s{args.seed}" / "weights" / "best.pt"
        name = f"kd_s{args.seed}_{args.recipe}"
        res = Distiller(teacher, demo.student, data_root / "data.yaml", overrides=ALL_RECIPES[args.recipe]).train(
            project=runs, name=name, exist_ok=True, **train
        )
    device = "cpu" if args.device == "cpu" else f"cuda:{args.device}"
    ev = evaluate(TorchPredictor(uy.load_detection_model(res.best), device), spec, "val", imgsz=args.imgsz)
    payload = {
        "name": name,
        "kind": args.job,
        "seed": args.seed,
        "recipe": args.recipe,
        "mAP50-95": ev.map50_95,
        "mAP50": ev.map50,
        "APs": ev.metrics["APs"],
        "seconds": time.time() - t0,
        "losses": _loss_curve(Path(res.save_dir) / "results.csv"),
    }
    (out / "jobs").mkdir(parents=True, exist_ok=True)
    (out / "jobs" / f"{name}.json").write_text(json.dumps(payload))


def _loss_curve(csv_path: Path) -> dict:
    """First and last epoch's training loss items from Ultralytics' results.csv (KD items are weighted)."""
    import csv

    if not csv_path.is_file():
        return {}
    rows = list(csv.DictReader(csv_path.open()))
    keep = lambda row: {k.strip(): float(v) for k, v in row.items() if k.strip().startswith("train/")}  # noqa: E731
    return {"first": keep(rows[0]), "last": keep(rows[-1])} if rows else {}


def summarize(results: list[dict], seeds: list[int], recipes: list[str]) -> tuple[dict, str]:
    by = {r["name"]: r for r in results if "error" not in r}
    rows = {}
    for kind in ["teacher", "baseline", *[f"kd:{k}" for k in recipes]]:
        vals, deltas = [], []
        for s in seeds:
            key = f"{kind}_s{s}" if not kind.startswith("kd:") else f"kd_s{s}_{kind[3:]}"
            if key in by:
                vals.append(by[key]["mAP50-95"])
                base = by.get(f"baseline_s{s}")
                if base:
                    deltas.append(by[key]["mAP50-95"] - base["mAP50-95"])
        if vals:
            rows[kind] = {
                "mean": statistics.mean(vals),
                "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                "delta_mean": statistics.mean(deltas) if deltas else None,
                "delta_min": min(deltas) if deltas else None,
                "n": len(vals),
                "values": vals,
            }
    md = [
        "| run | mAP50-95 mean | std | delta vs baseline (mean) | delta (worst seed) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for k, r in rows.items():
        d = "" if r["delta_mean"] is None else f"{r['delta_mean']:+.4f}"
        dm = "" if r["delta_min"] is None else f"{r['delta_min']:+.4f}"
        md.append(f"| {k} | {r['mean']:.4f} | {r['std']:.4f} | {d} | {dm} | {r['n']} |")
    return rows, "\n".join(md)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--suite", choices=sorted(SUITES), default="recipes")
    p.add_argument("--recipes", nargs="+", default=None, help="recipe names (default: the whole suite)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=120)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--job", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", default=None)
    p.add_argument("--train-arg", action="append", help="Ultralytics training argument KEY=VALUE (repeatable)")
    p.add_argument("--scene", action="append", help="SceneConfig field KEY=VALUE (repeatable)")
    args = p.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "1")
    if args.job:
        job_main(args)
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    args.recipes = args.recipes or list(SUITES[args.suite])
    t0 = time.time()
    from detkd.data.synthetic import generate_dataset
    from detkd.demo import DemoConfig

    scenes = DemoConfig().scenes
    scenes = type(scenes)(**{**scenes.__dict__, "n_train": args.n_train, "n_val": args.n_val, **_kv(args.scene)})
    for s in args.seeds:  # once, before the parallel jobs read it
        generate_dataset(Path(args.out) / f"data_s{s}", scenes, seed=s)
    with ThreadPoolExecutor(args.parallel) as pool:
        first = list(
            pool.map(lambda j: run_job(args, *j), [(k, s) for s in args.seeds for k in ("teacher", "baseline")])
        )
        kd = list(pool.map(lambda j: run_job(args, "kd", *j), [(s, r) for s in args.seeds for r in args.recipes]))
    results = first + kd
    rows, md = summarize(results, args.seeds, args.recipes)
    meta = {"args": vars(args), "wall_s": time.time() - t0, "results": results, "summary": rows}
    (Path(args.out) / "sweep.json").write_text(json.dumps(meta, indent=2))
    (Path(args.out) / "sweep.md").write_text(md + "\n")
    print(md)
    print(f"wall {time.time() - t0:.0f}s; errors: {[r for r in results if 'error' in r]}")


if __name__ == "__main__":
    main()
