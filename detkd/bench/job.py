"""One benchmark job (train one model, or only evaluate one) in its own process: ``python -m detkd.bench.job SPEC``.

A process per job keeps torch state, thread settings and peak memory separate between runs, and lets a crashed run
be reported instead of ending the whole benchmark. The spec (JSON) says what to train; the job writes its result
(JSON) to ``spec["result"]``: COCO metrics of the final model on the val split, training seconds, peak memory.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch


def peak_memory_mb(device: str) -> dict[str, float | None]:
    """Peak resident memory of this process and, on a GPU, peak allocated CUDA memory (MiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    gpu = torch.cuda.max_memory_allocated() / 2**20 if device != "cpu" and torch.cuda.is_available() else None
    return {"peak_rss_mb": round(rss, 1), "peak_gpu_mb": None if gpu is None else round(gpu, 1)}


def _evaluate(weights: str | Path, spec: Any, imgsz: int, device: str, class_map: str | None = None) -> dict[str, Any]:
    """Val metrics of ``weights`` on the data's classes (a teacher of other classes through ``class_map``)."""
    from detkd.eval.coco import evaluate
    from detkd.eval.predict import TorchPredictor, data_class_map, on_data_classes
    from detkd.students import ultralytics_yolo as uy
    from detkd.teachers import load_eval_model
    from detkd.utils.device import torch_device_name

    model = load_eval_model(weights)
    cmap = data_class_map(uy.class_names(model), spec.names, class_map, source=weights)
    started = time.time()
    ev = evaluate(on_data_classes(TorchPredictor(model, torch_device_name(device)), cmap), spec, "val", imgsz=imgsz)
    m = ev.metrics
    return {
        "mAP50-95": ev.map50_95,
        "mAP50": ev.map50,
        "APs": m.get("APs"),
        "APm": m.get("APm"),
        "APl": m.get("APl"),
        "params": uy.count_parameters(model),
        "eval_s": round(time.time() - started, 1),
    }


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Do one job; returns (and the caller writes) its result."""
    from detkd.data.dataset import load_data_spec
    from detkd.engine.distiller import Distiller, train_detector
    from detkd.engine.run_folder import TrainResult

    data = load_data_spec(spec["data"])
    device = str(spec["device"])
    kind = spec["kind"]
    result: dict[str, Any] = {"name": spec["name"], "run": spec.get("run"), "seed": spec.get("seed"), "kind": kind}
    train_s = 0.0
    if kind == "eval":
        weights = spec["model"]
    else:
        common = {"project": spec["project"], "name": spec["name"], "exist_ok": True, "threads": spec.get("threads")}
        started = time.time()
        folder = Path(spec["project"]) / spec["name"]
        if (folder / "weights" / "resume.pt").is_file():  # a job killed earlier: resumed (exactly its run)
            from detkd.engine.resume import resume

            result["resumed"] = True
            out = resume(folder, threads=spec.get("threads"))
        elif kind == "chain":  # teacher assistants or generations: every stage's training is counted
            from detkd.engine.schemes import distill_chain, is_chain, resume_chain

            if is_chain(folder):
                chain = resume_chain(folder, threads=spec.get("threads"))
            else:
                chain = distill_chain(spec["teacher"], spec["model"], data, overrides=spec["kd"],
                                      class_map=spec.get("class_map"), assistants=spec.get("assistants"),
                                      generations=int(spec.get("generations") or 0), **common,
                                      **spec["train"])  # fmt: skip
            result["stages"] = [{k: s.get(k) for k in ("name", "model", "wall_time_s")} for s in chain.stages]
            out = TrainResult(chain.save_dir, chain.best, chain.best, chain.save_dir / "chain.json", chain.wall_time_s)
        elif kind == "distill":
            res = Distiller(spec.get("teacher"), spec["model"], data, overrides=spec["kd"],
                            class_map=spec.get("class_map"), teacher_cache=spec.get("teacher_cache"),
                            unlabeled=spec.get("unlabeled"), peers=spec.get("peers"))  # fmt: skip
            out = res.train(**common, **spec["train"])
        else:  # "train": a teacher, a baseline, or Ultralytics' built-in KD (distill_model= in spec["train"])
            out = train_detector(spec["model"], data, **common, **spec["train"])
        train_s = time.time() - started
        if kind == "chain":  # every stage's training, also of stages a killed job trained before it was resumed
            train_s = sum(float(s.get("wall_time_s") or 0.0) for s in result["stages"])
        weights = out.best if spec["train"].get("val", True) or kind == "chain" else out.last
        result.update(weights=str(weights), results_csv=str(out.results_csv))
    result.update(train_s=round(train_s, 1), **peak_memory_mb(device))
    class_map = spec.get("class_map") if kind == "eval" else None  # a distill job's map is its teacher's
    result.update(_evaluate(weights, data, int(spec["imgsz"]), device, class_map))
    return result


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    args = argv if argv is not None else sys.argv[1:]
    spec = json.loads(Path(args[0]).read_text())
    from detkd.errors import DetkdError

    try:
        result = run(spec)
    except DetkdError as e:  # a user error: one line (the harness shows the log's last lines), exit 2 as the CLI does
        print(f"detkd: error: {e}", file=sys.stderr)
        return 2
    out = Path(spec["result"])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({**result, "spec_key": spec["key"]}, indent=2))
    tmp.replace(out)  # a result file exists only for a job that finished
    return 0


if __name__ == "__main__":
    sys.exit(main())
