"""Chains of distillation runs in one command: teacher-assistant chains and born-again generations.

* **Teacher assistants** (TAKD, Mirzadeh et al., AAAI 2020): with a large capacity gap, the teacher first distils
  a mid-sized assistant, which then distils the student (``--assistant yolov8s.yaml``; several assistants make a
  longer chain, largest first).
* **Generations** ("born again", Furlanello et al., ICML 2018): the student is trained, then a fresh student of the
  same architecture is distilled from it, ``N`` times (``--generations N``); generation 0 is distilled from the
  teacher when one is given, else trained on the labels alone.

Each stage is a normal run folder inside the chain's folder (``<project>/<name>/1-assistant-yolov8s``, ...), with
its own record, checkpoints and resume; the chain's record, ``chain.json``, lists the stages, the teacher each
learned from, its metrics and training time. A killed chain continues with ``--resume <chain folder>``: finished
stages are kept, a killed stage resumes from its last epoch, later stages start.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detkd._io import read_text
from detkd._offline import offline_call
from detkd.config import KDConfig, kd_config_from_dict, resolve_kd_config
from detkd.data.dataset import DataSpec
from detkd.engine.checkpointing import RESUME_FILE
from detkd.engine.distiller import Distiller, train_detector
from detkd.engine.resume import finished_result, resume
from detkd.engine.run_folder import RUN_META, TrainResult
from detkd.engine.runlock import RunLock
from detkd.engine.train_args import check_train_args
from detkd.errors import DetkdError, InputFileError
from detkd.logs import logged
from detkd.teachers.self_teacher import SELF_TEACHER
from detkd.utils.environment import run_environment
from detkd.utils.files import replace_text

LOGGER = logging.getLogger(__name__)
CHAIN_FILE = "chain.json"
MAP_KEYS = ("metrics/mAP50-95(B)", "metrics/mAP50(B)")


@dataclass(frozen=True)
class Stage:
    """One run of a chain: ``model`` trained in the folder ``name``, from the previous stage (or the teacher)."""

    name: str
    model: str
    role: str  # "assistant", "student" or "generation"


@dataclass
class ChainResult:
    """Where a chain's runs are and what each measured; ``best`` and ``metrics`` are the last stage's."""

    save_dir: Path
    stages: list[dict[str, Any]]
    best: Path
    metrics: dict[str, float] = field(default_factory=dict)
    wall_time_s: float = 0.0


def _stem(model: str) -> str:
    return Path(model).name.rsplit(".", 1)[0]


def plan_stages(student: str, assistants: list[str], generations: int) -> list[Stage]:
    """The chain's runs in order.

    >>> [s.name for s in plan_stages("yolov8n.yaml", ["yolov8m.yaml", "yolov8s.yaml"], 0)]
    ['1-assistant-yolov8m', '2-assistant-yolov8s', '3-student-yolov8n']
    >>> [s.name for s in plan_stages("yolov8n.yaml", [], 2)]
    ['gen0-yolov8n', 'gen1-yolov8n', 'gen2-yolov8n']
    """
    if generations < 0:
        raise DetkdError(f"--generations {generations}: must be >= 0")
    stages = [Stage(f"{i + 1}-assistant-{_stem(a)}", str(a), "assistant") for i, a in enumerate(assistants)]
    if generations == 0:
        return [*stages, Stage(f"{len(stages) + 1}-student-{_stem(student)}", str(student), "student")]
    prefix = f"{len(stages) + 1}-" if stages else ""
    return stages + [
        Stage(f"{prefix}gen{g}-{_stem(student)}", str(student), "generation") for g in range(generations + 1)
    ]


def _metrics(result: TrainResult) -> dict[str, float]:
    return {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}


def _stage_state(folder: Path) -> str:
    """``finished``, ``killed`` (a resumable run), or ``new``."""
    meta = folder / RUN_META
    if meta.is_file():
        try:
            if json.loads(read_text(meta, "run description", max_bytes=1 << 22)).get("finished"):
                return "finished"
        except ValueError as e:
            raise InputFileError(meta, f"is not valid JSON ({e})") from e
    return "killed" if (folder / "weights" / RESUME_FILE).is_file() else "new"


def _weights(result: TrainResult, train_args: dict[str, Any]) -> Path:
    """What the next stage learns from: the stage's best weights, or its final ones when it trains without
    validation (``val=False``: no selection, so ``best.pt`` means nothing)."""
    if train_args.get("val", True) is False or not result.best.is_file():
        return result.last
    return result.best


class _Chain:
    def __init__(self, folder: Path, record: dict[str, Any]) -> None:
        self.folder, self.record = folder, record

    def save(self) -> None:
        replace_text(self.folder / CHAIN_FILE, json.dumps(self.record, indent=2, default=str))

    def run(self, threads: int | None, changes: dict[str, Any]) -> ChainResult:
        r = self.record
        kd = kd_config_from_dict(r["kd"])
        started = time.time()
        previous: str | None = r["teacher"]
        result: TrainResult | None = None
        for i, stage in enumerate(r["stages"]):
            folder = self.folder / stage["name"]
            state = _stage_state(folder)
            stage["teacher"] = previous
            t0 = time.time()
            if state == "finished":
                LOGGER.info("chain %s: stage %s finished earlier", self.folder, stage["name"])
                result = finished_result(folder)
            elif state == "killed":
                LOGGER.info("chain %s: resuming stage %s", self.folder, stage["name"])
                result = resume(folder, threads=threads, **changes)
            else:
                LOGGER.info("chain %s: stage %s: %s from %s", self.folder, stage["name"], stage["model"],
                            previous or "the labels alone")  # fmt: skip
                args = {**r["train_args"], **{k: v for k, v in changes.items() if v is not None}}
                where = {"project": self.folder, "name": stage["name"], "exist_ok": True, "threads": threads}
                if previous is None:
                    result = train_detector(stage["model"], r["data"], **where, **args)
                else:
                    first = i == 0
                    distiller = Distiller(previous, stage["model"], r["data"], kd,
                                          class_map=r["class_map"] if first else None,
                                          allow_random_teacher=bool(r["allow_random_teacher"]) and first)  # fmt: skip
                    result = distiller.train(**where, **args)
            if state != "finished":
                stage.update(metrics=_metrics(result), wall_time_s=round(time.time() - t0, 1))
            stage.update(folder=str(folder), weights=str(_weights(result, r["train_args"])), status="finished")
            self.save()
            previous = str(_weights(result, r["train_args"]))
        assert result is not None
        r["finished"] = True
        self.save()
        last = r["stages"][-1]
        LOGGER.info("chain %s:\n%s", self.folder, describe_chain(r))
        return ChainResult(self.folder, r["stages"], _weights(result, r["train_args"]), dict(last.get("metrics") or {}),
                           round(time.time() - started, 1))  # fmt: skip


def describe_chain(record: dict[str, Any]) -> str:
    """One line per stage: name, teacher, mAP50-95 / mAP50 (Ultralytics' val of the stage's best weights), time."""
    lines = []
    for s in record["stages"]:
        m = s.get("metrics") or {}
        maps = " / ".join(f"{m[k]:.4f}" if k in m else "-" for k in MAP_KEYS)
        teacher = Path(str(s.get("teacher"))).parent.parent.name if s.get("teacher") else "labels"
        if s.get("teacher") == record.get("teacher"):
            teacher = str(record.get("teacher"))
        lines.append(f"  {s['name']:<28} from {teacher:<28} mAP50-95 / mAP50 {maps}  {s.get('wall_time_s', '-')} s")
    return "\n".join(lines)


@offline_call
@logged
def distill_chain(
    teacher: str | Path | None,
    student: str | Path,
    data: str | Path | DataSpec,
    kd: KDConfig | dict[str, Any] | str | Path | None = None,
    *,
    assistants: list[str | Path] | None = None,
    generations: int = 0,
    overrides: list[str] | None = None,
    class_map: str | Path | None = None,
    allow_random_teacher: bool = False,
    project: str | Path = "runs/detkd",
    name: str = "chain",
    exist_ok: bool = False,
    threads: int | None = None,
    **train_args: Any,
) -> ChainResult:
    """Distil through a chain of runs: ``teacher -> assistants... -> student`` and/or ``generations`` of the student
    (see the module docstring). Every stage trains with the same KD recipe and the same training arguments (a
    matched budget per run: a chain of ``k`` stages costs ``k`` runs). ``teacher`` None is allowed with
    ``generations`` (generation 0 then learns from the labels alone).

    Returns the final student's weights and metrics, and every stage's record (also in ``<folder>/chain.json``).
    """
    from ultralytics.utils.files import increment_path

    chain = [str(a) for a in assistants or []]
    if generations < 0:
        raise DetkdError(f"--generations {generations}: must be >= 0")
    if not chain and generations <= 0:
        raise DetkdError("a chain needs --assistant MODEL (repeatable) or --generations N (N >= 1)")
    if teacher is None and chain:
        raise DetkdError("--assistant needs a --teacher: the chain is teacher -> assistant(s) -> student")
    if teacher is not None and str(teacher) == SELF_TEACHER:
        raise DetkdError("--teacher self distils within one run; it does not combine with --assistant/--generations")
    check_train_args(train_args)
    cfg = resolve_kd_config(kd, overrides)
    data_path = data.yaml_path if isinstance(data, DataSpec) else data
    stages = plan_stages(str(student), chain, generations)
    folder = Path(increment_path(Path(project).resolve() / name, exist_ok=exist_ok))
    if (folder / CHAIN_FILE).is_file() and not exist_ok:
        raise DetkdError(f"{folder}: holds a chain already; continue it with --resume {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "kind": "chain",
        "teacher": str(teacher) if teacher is not None else None,
        "student": str(student),
        "assistants": chain,
        "generations": int(generations),
        "data": str(Path(data_path).resolve()),
        "kd": cfg.to_dict(),
        "class_map": str(class_map) if class_map else None,
        "allow_random_teacher": bool(allow_random_teacher),
        "train_args": train_args,
        "threads": threads,
        "stages": [{"name": s.name, "model": s.model, "role": s.role, "status": "planned"} for s in stages],
        **run_environment(),
    }
    with RunLock(folder):
        runs = _Chain(folder, record)
        runs.save()
        return runs.run(threads, {})


def is_chain(folder: str | Path) -> bool:
    return (Path(folder) / CHAIN_FILE).is_file()


def _checked_record(path: Path) -> dict[str, Any]:
    """``chain.json``, checked: it comes from a folder that may not be the user's own."""
    try:
        record = json.loads(read_text(path, "chain record", max_bytes=1 << 22))
    except ValueError as e:
        raise InputFileError(path, f"is not valid JSON ({e})") from e
    if not isinstance(record, dict) or record.get("kind") != "chain":
        raise InputFileError(path, "is not a detkd chain record (expected 'kind': chain)")
    stages = record.get("stages")
    if not isinstance(stages, list) or not stages:
        raise InputFileError(path, "'stages' must be a non-empty list")
    for s in stages:
        if not isinstance(s, dict) or not all(isinstance(s.get(k), str) and s.get(k) for k in ("name", "model")):
            raise InputFileError(path, f"each stage needs a 'name' and a 'model' (got {s!r})")
        if Path(s["name"]).name != s["name"] or s["name"] in (".", ".."):
            raise InputFileError(path, f"stage name {s['name']!r} must be a plain folder name")
    for key in ("teacher", "class_map"):
        if record.get(key) is not None and not isinstance(record[key], str):
            raise InputFileError(path, f"'{key}' must be a string (got {record[key]!r})")
    if not isinstance(record.get("data"), str) or not isinstance(record.get("kd"), dict):
        raise InputFileError(path, "'data' must name the data YAML and 'kd' hold the recipe")
    if not isinstance(record.get("train_args"), dict):
        raise InputFileError(path, "'train_args' must be a mapping")
    try:
        check_train_args(record["train_args"])
        kd_config_from_dict(record["kd"])
    except DetkdError as e:
        raise InputFileError(path, str(e)) from e
    return record


@offline_call
@logged
def resume_chain(path: str | Path, **changes: Any) -> ChainResult:
    """Continue a killed chain: finished stages are kept, a killed stage resumes, the rest start. Only ``device``,
    ``workers`` and ``threads`` may change (as for :func:`detkd.engine.resume.resume`)."""
    folder = Path(path).resolve()
    record = _checked_record(folder / CHAIN_FILE)
    threads = changes.pop("threads", None) or record.get("threads")
    with RunLock(folder):
        return _Chain(folder, record).run(threads, changes)
