"""``detkd bench quality``: every run of a suite at the same budget and seeds, scored with detkd's COCO evaluator.

Plan: prepare the data (synthetic data is generated once, the same for every seed), get the teacher (trained by
the harness and cached by a content hash of data + config, or given), then one job per (run, seed), each in its own
process. Finished jobs are kept (``<work>/jobs``), so an interrupted benchmark continues where it stopped. The
result (JSON, Markdown, PNG) goes to ``--out`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from detkd.bench import stats
from detkd.bench.suites import BUILTIN_KD_ARGS, CACHE_RUNS, CHAIN_RUNS, FAMILY_ONLY, UNLABELED_RUNS, Suite
from detkd.errors import ConfigError, DetkdError
from detkd.progress import progress_bar
from detkd.teachers.self_teacher import SELF_TEACHER

LOGGER = logging.getLogger(__name__)
MIN_TEACHER_MAP = 0.01  # a teacher below this mAP50-95 on val teaches nothing: the suite says so
CACHE_VERSION = 1  # bump when what a cached teacher means changes
TEACHER_FIELDS = ("weights", "source", "key", "mAP50-95", "mAP50", "APs", "APm", "APl", "params", "train_s")


def cache_root() -> Path:
    """Where harness-trained teachers are kept: ``$DETKD_CACHE`` or ``~/.cache/detkd``."""
    return Path(os.environ.get("DETKD_CACHE") or Path.home() / ".cache" / "detkd")


def data_fingerprint(data_yaml: Path) -> str:
    """SHA-256 of a dataset's content: class names and every train/val image and label file (names and bytes)."""
    from detkd.data.dataset import list_images, load_data_spec
    from detkd.data.split_lists import label_path_for

    spec = load_data_spec(data_yaml)
    h = hashlib.sha256(json.dumps(spec.names, sort_keys=True).encode())
    for split in ("train", "val"):
        for image in sorted(list_images(spec, split)):
            h.update(f"{split}/{image.name}".encode())
            h.update(image.read_bytes())
            label = label_path_for(image)
            h.update(label.read_bytes() if label.is_file() else b"<none>")
    return h.hexdigest()


def student_yaml(spec: str, folder: Path) -> str:
    """The student spec; ``yolov8p.yaml`` (YOLOv8 at width 0.125, a third of YOLOv5n) is written to ``folder``."""
    if Path(spec).name != "yolov8p.yaml" or Path(spec).is_file():
        return spec
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load("yolov8n.yaml")
    cfg.update(scales={"p": [0.33, 0.125, 1024]}, scale="p")
    cfg.pop("yaml_file", None)
    path = folder / "yolov8p.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def prepare_data(suite: Suite, work: Path) -> Path:
    """The suite's data YAML; synthetic data is generated under ``work/data`` (seed 0, the same for every run)."""
    if not suite.synthetic:
        return suite.resolve(suite.data).resolve()
    from detkd.data.synthetic import SceneConfig, generate_dataset

    return generate_dataset(work / "data", SceneConfig(**dict(suite.scenes)), seed=0) / "data.yaml"


def student_data(suite: Suite, data_yaml: Path, work: Path) -> tuple[Path, Path | None]:
    """The students' data YAML and their unlabeled images (an image list, or None).

    A paired suite's students train on the second modality (``ir/data.yaml``). With ``labelled_fraction`` the
    students' train split is a seeded draw of that share of the train images (``work/split/labelled.txt``), and the
    rest are listed as their unlabeled images (``work/split/unlabeled.txt``); val is the suite's own."""
    import random

    import yaml

    from detkd.data.dataset import list_images, load_data_spec

    data = data_yaml.parent / "ir" / "data.yaml" if suite.paired else data_yaml
    if suite.labelled_fraction is None:
        return data, None
    spec = load_data_spec(data)
    images = sorted(list_images(spec, "train"))
    random.Random(0).shuffle(images)
    n = max(1, round(suite.labelled_fraction * len(images)))
    folder = work / "split"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "labelled.txt").write_text("".join(f"{p}\n" for p in sorted(images[:n])))
    (folder / "unlabeled.txt").write_text("".join(f"{p}\n" for p in sorted(images[n:])))
    val = [str(p) for p in spec.splits["val"]]
    out = {"path": str(spec.root), "train": str(folder / "labelled.txt"), "val": val[0] if len(val) == 1 else val,
           "names": dict(spec.names)}  # fmt: skip
    (folder / "labelled.yaml").write_text(yaml.safe_dump(out, sort_keys=False))
    return folder / "labelled.yaml", folder / "unlabeled.txt"


@dataclass
class Plan:
    """What a quality benchmark will run."""

    suite: Suite
    runs: tuple[str, ...]
    seeds: tuple[int, ...]
    device: str
    work: Path
    out: Path
    parallel: int = 1
    cache: Path | None = None

    @property
    def threads(self) -> int | None:
        """Torch CPU threads per job: the cores shared between parallel jobs (None on a GPU)."""
        return max(1, (os.cpu_count() or 1) // self.parallel) if self.device == "cpu" else None


class QualityBench:
    """Runs a :class:`Plan`; ``run()`` returns the result dict written to ``plan.out``."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.suite = plan.suite
        self.work = plan.work.resolve()
        self.jobs_dir = self.work / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._data_yaml: Path | None = None
        self._student_data: Path | None = None
        self._unlabeled: Path | None = None
        self.cache_build: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------------------------- inputs
    def data_yaml(self) -> Path:
        return prepare_data(self.suite, self.work)

    def train_args(self, epochs: int, seed: int) -> dict[str, Any]:
        s = self.suite
        args = {"epochs": epochs, "imgsz": s.imgsz, "batch": s.batch, "seed": seed, "device": self.plan.device}
        args.update({"plots": False, "verbose": False, **dict(s.train_args)})
        return args

    def teacher_key(self, data_fp: str) -> str:
        s = self.suite
        import ultralytics

        model = Path(s.teacher)  # a YAML file of the user's: its content, so an edit in place trains a new teacher
        config = {
            "v": CACHE_VERSION,
            "data": data_fp,
            "model": s.teacher,
            "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest() if model.is_file() else None,
            "train": self.train_args(s.teacher_epochs or s.epochs, 0) | {"device": None},
            "ultralytics": ultralytics.__version__,
        }
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:20]

    def teacher(self, data_yaml: Path) -> dict[str, Any]:
        """The teacher's weights and val metrics: given, cached, or trained now (and cached)."""
        s = self.suite
        if s.teacher_given:
            weights = s.teacher_spec()
            mapped: dict[str, Any] = {"class_map": s.class_map_path()} if s.class_map else {}  # on the data's classes
            job = self._job("teacher", "eval", None, 0, model=weights, **mapped)
            res = self._run_job(job)
            return {**res, "weights": weights, "source": "given", "key": None}
        fp = data_fingerprint(data_yaml)
        key = self.teacher_key(fp)
        folder = (self.plan.cache or cache_root()) / "teachers" / key
        meta = folder / "teacher.json"
        if meta.is_file():
            cached = json.loads(meta.read_text())
            if Path(cached["weights"]).is_file():
                LOGGER.info("teacher: cached %s (%s, mAP50-95 %.4f)", cached["weights"], s.teacher, cached["mAP50-95"])
                return {**cached, "source": "cache"}
        LOGGER.info("teacher: training %s for %d epochs (cache key %s)", s.teacher, s.teacher_epochs or s.epochs, key)
        job = self._job("teacher", "train", None, 0, model=s.teacher, epochs=s.teacher_epochs or s.epochs)
        job["project"] = str(folder)
        res = self._run_job(job)
        res.update(key=key, data_fingerprint=fp, model=s.teacher)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = meta.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=2))
        tmp.replace(meta)
        return {**res, "source": "trained"}

    # ------------------------------------------------------------------------------------------------- jobs
    def _job(
        self, run: str, kind: str, seed: int | None, train_seed: int, train: dict[str, Any] | None = None, **kw: Any
    ) -> dict[str, Any]:
        s = self.suite
        name = run if seed is None else f"{run}_s{seed}"
        epochs = kw.pop("epochs", s.epochs)
        data = kw.pop("data", self._data_yaml)
        job: dict[str, Any] = {
            "name": name,
            "run": run,
            "seed": seed,
            "kind": kind,
            "data": str(data),
            "imgsz": s.imgsz,
            "device": self.plan.device,
            "threads": self.plan.threads,
            "project": str(self.work / "runs"),
            "train": {
                **self.train_args(epochs, train_seed),
                **(dict(s.student_train_args) if seed is not None else {}),
                **(train or {}),
            },
            "kd": [],
            **kw,
        }
        identity = {k: v for k, v in job.items() if k not in ("threads", "project")}
        job["key"] = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        job["result"] = str(self.jobs_dir / f"{name}.json")
        return job

    def _run_job(self, job: dict[str, Any]) -> dict[str, Any]:
        result = Path(job["result"])
        if result.is_file():
            done = json.loads(result.read_text())
            if done.get("spec_key") == job["key"]:
                LOGGER.info("%s: done earlier (%s)", job["name"], result)
                return dict(done)
        spec_path = self.jobs_dir / f"{job['name']}.spec.json"
        spec_path.write_text(json.dumps(job, indent=2))
        log = self.work / "logs" / f"{job['name']}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        LOGGER.info("%s: started (log %s)", job["name"], log)
        started = time.time()
        env = {**os.environ, "YOLO_OFFLINE": "1"}
        with open(log, "w") as f:
            rc = subprocess.run(
                [sys.executable, "-m", "detkd.bench.job", str(spec_path)], stdout=f, stderr=subprocess.STDOUT, env=env
            ).returncode
        if rc != 0 or not result.is_file():
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise DetkdError(f"benchmark job {job['name']} failed (exit {rc}); log {log}: {' | '.join(tail)}")
        done = json.loads(result.read_text())
        LOGGER.info("%s: mAP50-95 %.4f (%.0f s)", job["name"], done["mAP50-95"], time.time() - started)
        return dict(done)

    def teacher_cache(self, teacher: dict[str, Any]) -> Path:
        """The teacher's cache over the students' images (built once, content-keyed: a rerun reuses it)."""
        from detkd.offline.build import cache_teacher

        s = self.suite
        assert self._student_data is not None and self._data_yaml is not None
        from detkd.offline.cache import CACHE_VERSION as FORMAT_VERSION

        ident = json.dumps([teacher["weights"], str(self._student_data), s.imgsz, s.paired, FORMAT_VERSION])
        out = self.work / "cache" / hashlib.sha256(ident.encode()).hexdigest()[:16]
        pair = self._data_yaml.parent / "images" / "train" if s.paired else None
        built = cache_teacher(teacher["weights"], out=out, data=self._student_data,
                              unlabeled=[self._unlabeled] if self._unlabeled else [], imgsz=s.imgsz,
                              class_map=s.class_map_path(), device=self.plan.device, pair_dir=pair,
                              threads=self.plan.threads, progress=False)  # fmt: skip
        self.cache_build = {"folder": str(out), "images": built.images, "new_images": built.new_images,
                            "soft_boxes": built.boxes, "score_cells": built.cells, "seconds": round(built.seconds, 1),
                            "mib": round(built.bytes / 2**20, 2)}  # fmt: skip
        return out

    def student_jobs(self, teacher: dict[str, Any]) -> list[dict[str, Any]]:
        s, jobs = self.suite, []
        student = student_yaml(s.student, self.work)
        data = self._student_data
        cache = self.teacher_cache(teacher) if any(r in CACHE_RUNS for r in self.plan.runs) else None
        for seed in self.plan.seeds:
            for run in self.plan.runs:
                if run == "baseline":
                    jobs.append(self._job(run, "train", seed, seed, model=student, data=data))
                elif run == "ultralytics-kd":
                    builtin = {"distill_model": teacher["weights"], **BUILTIN_KD_ARGS}  # loaded by detkd
                    jobs.append(self._job(run, "train", seed, seed, train=builtin, model=student, data=data))
                elif run in CHAIN_RUNS:
                    chain: dict[str, Any] = {"generations": 1} if run == "detkd-born-again" else {}
                    if run == "detkd-ta":
                        if not s.assistant:
                            raise ConfigError(f"suite {s.name!r}: detkd-ta needs the suite's assistant model")
                        chain["assistants"] = [student_yaml(s.assistant, self.work)]
                    jobs.append(self._job(run, "chain", seed, seed, model=student, kd=[*s.kd, *FAMILY_ONLY[run]],
                                          data=data, teacher=teacher["weights"], class_map=s.class_map_path(),
                                          **chain))  # fmt: skip
                else:
                    kd = [*s.kd, *FAMILY_ONLY[run]]
                    extra: dict[str, Any] = {}
                    if run == "detkd-self":
                        extra["teacher"] = SELF_TEACHER
                    elif run == "detkd-mutual":
                        extra.update(teacher=None, peers=[student_yaml(s.teacher, self.work)])
                    elif run in CACHE_RUNS:
                        extra["teacher_cache"] = str(cache)
                    else:
                        extra.update(teacher=teacher["weights"], class_map=s.class_map_path())
                    if run in UNLABELED_RUNS:
                        extra["unlabeled"] = [str(self._unlabeled)]
                    jobs.append(self._job(run, "distill", seed, seed, model=student, kd=kd, data=data, **extra))
        return jobs

    def run(self, command: str) -> dict[str, Any]:
        from detkd.utils.environment import run_environment

        s, started = self.suite, time.time()
        self._data_yaml = self.data_yaml()
        self._student_data, self._unlabeled = student_data(s, self._data_yaml, self.work)
        teacher = self.teacher(self._data_yaml)
        warnings = []
        if float(teacher.get("mAP50-95") or 0.0) < MIN_TEACHER_MAP:
            warnings.append(
                f"the teacher scores mAP50-95 {float(teacher.get('mAP50-95') or 0.0):.4f} on val: it has about nothing "
                "to teach, so the KD rows of this suite measure nothing (train the teacher longer)"
            )
            LOGGER.warning("%s", warnings[-1])
        jobs = self.student_jobs(teacher)
        bar = progress_bar(len(jobs), f"bench {s.name}", unit="job")

        def run_one(job: dict[str, Any]) -> dict[str, Any]:
            out = self._run_job(job)
            bar.update()
            return out

        with ThreadPoolExecutor(self.plan.parallel) as pool:
            results = list(pool.map(run_one, jobs))
        bar.close()
        env = run_environment()
        env["command"] = command
        payload = {
            "kind": "quality",
            "suite": {
                **asdict(self.suite),
                "scenes": dict(s.scenes),
                "train_args": dict(s.train_args),
                "student_train_args": dict(s.student_train_args),
            },
            "runs": list(self.plan.runs),
            "seeds": list(self.plan.seeds),
            "device": self.plan.device,
            "device_name": env["cuda"] if self.plan.device != "cpu" else env["cpu"],
            "parallel": self.plan.parallel,
            "threads_per_job": self.plan.threads,
            "environment": env,
            "teacher": {k: teacher.get(k) for k in TEACHER_FIELDS},
            "warnings": warnings,
            "jobs": results,
            "summary": stats.summarize(results, teacher, self.plan.runs, self.plan.seeds),
            "cache_build": self.cache_build,
            "student_data": str(self._student_data),
            "wall_s": round(time.time() - started, 1),
            "date": time.strftime("%Y-%m-%d"),
        }
        return payload


def device_tag(payload: dict[str, Any]) -> str:
    """A short device name for file names: ``cpu``, ``h100``, ``h200``, ``gpu``."""
    if payload["device"] == "cpu":
        return "cpu"
    name = str(payload.get("device_name") or "").lower()
    return next((t for t in ("h100", "h200", "a100", "l4", "t4") if t in name), "gpu")


def write_quality(payload: dict[str, Any], out: Path) -> Path:
    """Write ``quality_<suite>_<device>_<date>.{json,md,png}`` to ``out``; returns the JSON path."""
    from detkd.bench import report

    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"quality_{payload['suite']['name']}_{device_tag(payload)}_{payload['date']}"
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    report.render_quality(payload, stem.with_suffix(".json"))
    return stem.with_suffix(".json")
