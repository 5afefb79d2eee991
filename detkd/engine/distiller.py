"""Python API: ``Distiller(teacher, student, data, kd).train(...)`` and ``train_detector(...)``.

Everything that can be checked is checked here, before any training starts: the data YAML and every label row and
image header, loading the teacher safely, building the student, pairing their levels and classes.

Example::

    from detkd import Distiller
    Distiller("teacher.pt", "yolov8n.yaml", "data.yaml", kd="kd.yaml").train(epochs=50, imgsz=640)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from detkd._offline import offline_call
from detkd.config import KDConfig, dump_kd_config, resolve_kd_config
from detkd.data.checks import UNLABELED, checked_data
from detkd.data.dataset import DataSpec
from detkd.engine import distributed
from detkd.engine.kd_trainer import KDTrainer
from detkd.engine.mutual import MUTUAL_TEACHER, Peer, PeerView, save_and_score_peers
from detkd.engine.oom import oom_advice, out_of_memory
from detkd.engine.run_folder import (
    RUN_META,
    TrainResult,
    check_room,
    data_footnote,
    prepared_run_folder,
    write_data,
    write_meta,
)
from detkd.engine.train_args import check_train_args
from detkd.engine.trainer import DetectorTrainer
from detkd.errors import ConfigError, DetkdError, InputFileError
from detkd.logs import logged
from detkd.losses.composite import KDComposite
from detkd.methods import get_method
from detkd.offline.cache import TeacherCache, image_digests
from detkd.offline.teacher import CachedTeacher
from detkd.students import ultralytics_yolo as uy
from detkd.teachers import build_teacher, refuse_untrained
from detkd.teachers.inputs import input_files
from detkd.teachers.mapped import paired_classes
from detkd.teachers.self_teacher import ONLINE_PRESET, SELF_TEACHER, EMATeacher
from detkd.teachers.ultralytics_yolo import UltralyticsTeacher
from detkd.types import Teacher
from detkd.utils.args import check_threads
from detkd.utils.environment import run_environment
from detkd.utils.files import file_digest, fingerprints
from detkd.utils.rng import seeded

LOGGER = logging.getLogger(__name__)

# detkd's defaults for Ultralytics training arguments (any can be overridden by the caller); plots on as in
# Ultralytics (results.png, confusion matrix, PR curves, batch previews) plus detkd's kd_terms.png.
DEFAULT_TRAIN_ARGS: dict[str, Any] = {"plots": True, "verbose": True}


def _run(trainer: DetectorTrainer, save_dir: Path, started: float, spec: DataSpec) -> TrainResult:
    try:
        trainer.train()
    except RuntimeError as e:
        if out_of_memory(e):
            raise DetkdError(oom_advice(trainer)) from e
        raise
    data_footnote(spec, save_dir)
    if distributed.is_main():
        meta_path = save_dir / RUN_META
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        write_meta(save_dir, {**meta, "finished": True})
    raw: dict[str, Any] = dict(trainer.metrics or {})
    metrics = {k: float(v) for k, v in raw.items() if isinstance(v, (int, float))}
    wdir = save_dir / "weights"
    return TrainResult(
        save_dir=save_dir,
        best=wdir / "best.pt",
        last=wdir / "last.pt",
        results_csv=save_dir / "results.csv",
        wall_time_s=time.time() - started,
        metrics=metrics,
    )


def _overrides(model_spec: str | Path, data_yaml: Path, save_dir: Path, **kw: Any) -> dict[str, Any]:
    args = {**DEFAULT_TRAIN_ARGS, **{k: v for k, v in kw.items() if v is not None}}
    args.update(model=str(model_spec), data=str(data_yaml), project=str(save_dir.parent), name=save_dir.name)
    args["exist_ok"] = True  # detkd chose (and created) the run folder already
    return args


@offline_call
@logged
def train_detector(
    model: str | Path,
    data: str | Path | DataSpec,
    *,
    project: str | Path = "runs/detkd",
    name: str = "train",
    exist_ok: bool = False,
    threads: int | None = None,
    resume_state: dict[str, Any] | None = None,
    bad_samples: str = "skip",
    **train_args: Any,
) -> TrainResult:
    """Train a detector without KD (a same-family teacher, or the baseline a distilled student is compared with).

    ``resume_state`` (used by :func:`resume`) continues a killed run in its own folder. ``bad_samples``: ``skip``
    (default) leaves unusable images out with a warning each, ``fail`` stops before training on the first.
    """
    started = time.time()
    check_train_args(train_args)
    check_threads(threads)
    spec = checked_data(data, bad_samples)
    with seeded(int(train_args.get("seed") or 0)):
        net = uy.build_student(model, spec.nc, spec.names)
    resuming = resume_state is not None
    with prepared_run_folder(project, name, exist_ok, train_args.get("device"), resuming=resuming) as save_dir:
        check_room(save_dir, net)
        data_yaml = write_data(spec, save_dir, resuming)
        if not resuming:
            write_meta(save_dir, {"kind": "train", "model": str(model), "data": str(spec.yaml_path),
                                   "train_args": train_args, "threads": threads, **run_environment()})  # fmt: skip
        overrides = _overrides(model, data_yaml, save_dir, **train_args)
        trainer = DetectorTrainer(net, overrides, threads=threads, resume_state=resume_state, data=spec)
        return _run(trainer, save_dir, started, spec)


def build_composite(kd: KDConfig, student: Any, teacher: Teacher, nc: int) -> KDComposite:
    """The KD objective (adapters, method modules) for a student/teacher pair; pairing errors are raised here."""
    return KDComposite(
        kd,
        student_specs=uy.feature_specs(student),
        teacher_specs=teacher.specs,
        student_classes=nc,
        teacher_classes=teacher.num_classes,
        student_reg_max=uy.reg_max(student),
        teacher_reg_max=teacher.reg_max,
    )


def _feature_source(teacher: Teacher) -> Teacher:
    """The teacher whose maps feed feature KD: an ensemble's chosen member, unwrapped from its class map."""
    members = getattr(teacher, "members", None)
    if members is not None:
        teacher = members[getattr(teacher, "features_from", 0)]
    return getattr(teacher, "inner", teacher)


def _warn_if_stale(cache: TeacherCache) -> None:
    """A warning when the teacher file a cache was built from has changed since (the cache keeps the old teacher's
    predictions, which may be what the user wants: it is theirs to rebuild)."""
    teacher = cache.key.get("teacher")
    recorded = cache.key.get("teacher_files") or {}
    path = Path(str(teacher))
    if not isinstance(recorded, dict) or not path.is_file() or path.name not in recorded:
        return
    now = file_digest(path)
    if now != recorded[path.name]:
        LOGGER.warning("%s changed since the teacher cache %s was built (SHA-256 %s, was %s): the cache holds the "
                       "old teacher's predictions; rebuild it (detkd cache ... --out NEW) to distil from the new one",
                       path, cache.folder, now[:12], str(recorded[path.name])[:12])  # fmt: skip


TEACHER_CHECK_IMAGES = 32  # val images the teacher is scored on before training
MIN_TEACHER_MAP50 = 0.01  # below this the teacher finds about nothing on the data: it teaches nothing


def score_teacher(teacher: Teacher, spec: DataSpec, imgsz: int, device: Any = None) -> dict[str, float]:
    """The teacher's COCO mAP on an evenly spaced sample of the val split, on the data's classes (through its class
    map), at the training image size: a teacher that scores about nothing is worth a warning before hours of KD."""
    from detkd.eval.coco import evaluate
    from detkd.eval.predict import TeacherPredictor
    from detkd.utils.device import torch_device_name

    dev = torch_device_name(device) if device not in (None, "") else ("cuda:0" if torch.cuda.is_available() else "cpu")
    size = max(32, -(-int(imgsz) // 32) * 32)
    module: Any = teacher
    module.to(dev)
    res = evaluate(TeacherPredictor(teacher, dev), spec, "val", imgsz=size, batch=8, max_images=TEACHER_CHECK_IMAGES)
    return {"mAP50-95": res.map50_95, "mAP50": res.map50, "images": res.images, "imgsz": size}


class Distiller:
    """Distil ``teacher`` into ``student`` on ``data``.

    Args:
        teacher: any teacher spec detkd reads (Ultralytics/RT-DETR ``.pt``, classic YOLOv5 ``.pt``,
            ``torchvision:<builder>:<weights>``, an ensemble YAML); None with ``teacher_cache``. A model YAML or a
            torchvision builder without weights is a random network: refused unless ``allow_random_teacher``.
        student: a model YAML (e.g. ``yolov8n.yaml``) or a ``.pt`` to start from.
        data: an Ultralytics data YAML.
        kd: a :class:`KDConfig`, a dict of its sections (as in a KD YAML), a path to a KD YAML, or None for the
            defaults.
        overrides: ``section.key=value`` strings applied on top of ``kd`` (e.g. ``["logit.weight=2"]``).
        class_map: a class-map YAML mapping the teacher's classes to the data's (see :mod:`detkd.classmap`);
            without one, a teacher whose classes include every data class by name is mapped by name.
        bad_samples: ``skip`` (default) leaves images that do not decode or have malformed labels out, with one
            warning each and a count; ``fail`` stops on the first, before training.
        teacher_cache: a folder made by ``detkd cache`` (:func:`detkd.offline.build_cache`): the teacher's soft
            boxes are read from it and travel through augmentation, and the teacher is never loaded (logit and box
            KD only).
        unlabeled: folders or image lists of unlabeled images, added to the data's ``unlabeled`` key; on them the
            student learns from the teacher only (see ``kd.unlabeled``).
        allow_random_teacher: distil from an untrained teacher on purpose (tests, smoke runs, timing); kept in the
            run record so that resume builds the same teacher.

    Raises:
        DetkdError: bad data, weights or configs, or a teacher/student pair that cannot be paired.
    """

    @offline_call
    @logged
    def __init__(
        self,
        teacher: str | Path | None,
        student: str | Path,
        data: str | Path | DataSpec,
        kd: KDConfig | dict[str, Any] | str | Path | None = None,
        *,
        overrides: list[str] | None = None,
        class_map: str | Path | None = None,
        bad_samples: str = "skip",
        teacher_cache: str | Path | None = None,
        unlabeled: list[str | Path] | None = None,
        allow_random_teacher: bool = False,
        peers: list[str | Path] | None = None,
    ) -> None:
        self_teacher = teacher is not None and str(teacher) == SELF_TEACHER
        if (self_teacher or peers) and kd is None:  # a teacher that learns in the run: KD adds to the labels' loss
            kd = ONLINE_PRESET
            LOGGER.info("%s: the KD recipe is %s (give --kd to choose another)",
                        "--teacher self" if self_teacher else "--peer", ONLINE_PRESET)  # fmt: skip
        self.kd = resolve_kd_config(kd, overrides)
        if teacher is not None and teacher_cache is None and not self_teacher:
            refuse_untrained(teacher, allow_random_teacher)  # before the data scan, which may take minutes
        self.data = checked_data(data, bad_samples, unlabeled)
        self.student_spec = str(student)
        self.callbacks: dict[str, list[Callable[[Any], None]]] = {}
        self.teacher_cache = str(teacher_cache) if teacher_cache is not None else None
        self.digests: dict[str, str] = {}
        self.class_map = str(class_map) if class_map else None
        self.allow_random_teacher = bool(allow_random_teacher)
        self.peer_specs = [str(p) for p in peers or []]
        self.peers: list[Peer] = []
        built: Teacher | None = None
        if self.peer_specs:
            if teacher is not None or teacher_cache is not None:
                raise DetkdError("mutual learning (--peer) trains the peers with the student instead of a teacher: "
                                 "give no --teacher or --teacher-cache")  # fmt: skip
            if class_map or unlabeled:
                raise DetkdError("mutual learning (--peer): every peer trains on the data's labels and classes (no "
                                 "--class-map, no --unlabeled)")  # fmt: skip
            self.teacher_spec = MUTUAL_TEACHER
        elif teacher_cache is not None:
            if teacher is not None:
                raise DetkdError("give a teacher or a teacher cache, not both (the cache records its teacher)")
            if class_map:
                raise DetkdError("a class map is applied when the cache is built (detkd cache --class-map)")
            self.teacher_spec = str(teacher_cache)
            built = self._cached_teacher(Path(teacher_cache))
            self.teacher: Teacher = built
        elif teacher is None:
            raise DetkdError("a teacher is needed: a teacher file, 'self' (the student's own EMA), or teacher_cache=")
        elif self_teacher:
            if class_map:
                raise DetkdError("--teacher self is the student itself: it has the data's classes (no --class-map)")
            self.teacher_spec = SELF_TEACHER
            with seeded(0):
                built = EMATeacher(uy.build_student(self.student_spec, self.data.nc, self.data.names))
            self.teacher = built
        else:
            self.teacher_spec = str(teacher)
            with seeded(0):  # a teacher from YAML (random weights) is the same in every process, e.g. on resume
                built = build_teacher(
                    teacher, nc=self.data.nc, names=self.data.names, allow_random=self.allow_random_teacher
                )
            self.teacher = paired_classes(built, self.data.names, class_map, required=self.kd.logit.weight > 0)
        self.student, self.composite = self._build_student(seed=0)  # validates the pairing now, not mid-epoch
        if isinstance(self.teacher, CachedTeacher):
            self.teacher.use_distributions = self.composite.box_method == "ld"
        LOGGER.info("teacher: %s", self.teacher.describe())
        LOGGER.info("KD recipe: %s (box KD mode: %s)", self.kd.describe(), self.composite.box_method)
        LOGGER.info("feature levels: %s", self.composite.pairing)
        method = self.kd.feature.method
        source = _feature_source(built) if built is not None else None
        if (
            source is not None
            and self.composite.use_feature
            and get_method("feature", method).scale_sensitive
            and not isinstance(source, UltralyticsTeacher)
        ):
            LOGGER.warning(
                "feature KD '%s' compares raw map values, and a teacher of another family (%s) has maps of another "
                "scale; the magnitude-invariant 'pkd' usually suits it better (--set kd.feature.method=pkd)",
                method,
                type(source).__name__,
            )

    def _cached_teacher(self, folder: Path) -> CachedTeacher:
        """The cache as a teacher, checked against this run: its classes, the recipe (no feature KD), and every
        training image (labelled and unlabeled) in it, by content."""
        cache = TeacherCache(folder)
        names = [self.data.names[i] for i in sorted(self.data.names)]
        if cache.names != names:
            raise InputFileError(
                folder / "cache.json", f"the cache's classes {cache.names[:6]} are not the data's {names[:6]} "
                "(build the cache with --class-map for a teacher of other classes)",
            )  # fmt: skip
        samples = [s for split in ("train", UNLABELED) if split in self.data.reports
                   for s in self.data.reports[split].samples]  # fmt: skip
        keys = image_digests([s.image for s in samples])
        self.digests = {str(s.image): k for s, k in zip(samples, keys, strict=True)}
        missing = [s.image for s, k in zip(samples, keys, strict=True) if k not in cache.entries]
        if missing:
            raise InputFileError(
                folder, f"{len(missing)} of {len(samples)} training images are not in the cache (e.g. {missing[0]}); "
                "build it over these images (detkd cache ... --data D.yaml [--unlabeled DIR]; a partial cache resumes)",
            )  # fmt: skip
        _warn_if_stale(cache)
        specs = uy.feature_specs(uy.build_student(self.student_spec, self.data.nc, self.data.names))
        teacher = CachedTeacher(cache, specs)
        teacher.configure(self.kd)
        if self.kd.logit.weight > 0 and not cache.has_field:
            LOGGER.warning(
                "%s holds no score field (a detections-only teacher, or built with --max-cells 0): logit KD draws "
                "its class targets from the soft boxes (kd.targets), which lowered mAP with a YOLO teacher "
                "(synthetic suite, seed 0: 0.060 with logit KD alone, 0.084 without KD; docs/offline.md); "
                "--set kd.logit.weight=0 keeps box KD only",
                cache.folder,
            )
        return teacher

    def _check_teacher(self, imgsz: int, device: Any) -> dict[str, float]:
        score = score_teacher(self.teacher, self.data, imgsz, device)
        LOGGER.info("teacher on %d val images at %d px: mAP50-95 %.4f, mAP50 %.4f", score["images"], score["imgsz"],
                    score["mAP50-95"], score["mAP50"])  # fmt: skip
        if score["mAP50"] < MIN_TEACHER_MAP50:
            LOGGER.warning(
                "the teacher scores mAP50 %.4f on %d val images: it finds about nothing on this data, so it has "
                "nothing to teach (untrained, trained on other classes without --class-map, or another image size?)",
                score["mAP50"],
                score["images"],
            )
        return score

    def _build_student(self, seed: int) -> tuple[Any, KDComposite]:
        """The student and the KD objective (adapters) for this pair, initialised from ``seed``; with peers, also
        the peers (from ``seed + k``), each with its view of the others and its own KD objective."""
        nc, names = self.data.nc, self.data.names
        if not self.peer_specs:
            with seeded(seed):
                student = uy.build_student(self.student_spec, nc, names)
                return student, build_composite(self.kd, student, self.teacher, nc)
        with seeded(seed):
            student = uy.build_student(self.student_spec, nc, names)
        if self.peer_specs:
            models = [student]
            for k, spec in enumerate(self.peer_specs, start=1):
                with seeded(seed + k):
                    models.append(uy.build_student(spec, nc, names))
            self.teacher = PeerView(models[1:], names)
            self.peers = []
            for k, spec in enumerate(self.peer_specs, start=1):
                view = PeerView([m for j, m in enumerate(models) if j != k], names)
                with seeded(seed + 100 + k):
                    comp = build_composite(self.kd, models[k], view, nc)
                self.peers.append(Peer(f"{k}-{Path(spec).name.rsplit('.', 1)[0]}", spec, models[k], view, comp))
        with seeded(seed):
            composite = build_composite(self.kd, student, self.teacher, nc)
        return student, composite

    @offline_call
    @logged
    def train(
        self,
        *,
        project: str | Path = "runs/detkd",
        name: str = "distill",
        exist_ok: bool = False,
        threads: int | None = None,
        on_nonfinite: str = "stop",
        resume_state: dict[str, Any] | None = None,
        **train_args: Any,
    ) -> TrainResult:
        """Train the student with KD; any Ultralytics training argument may be passed (epochs, imgsz, batch, ...).

        Each call starts from a freshly initialised student (from ``seed``, as ``train_detector`` does).
        ``on_nonfinite``: ``stop`` (default) or ``skip`` a step whose loss is NaN/Inf. ``resume_state`` (used by
        :func:`resume`) continues a killed run in its own folder.
        """
        started = time.time()
        check_train_args(train_args)
        check_threads(threads)
        if on_nonfinite not in ("stop", "skip"):
            raise DetkdError(f"on_nonfinite '{on_nonfinite}': valid: stop, skip")
        teacher_score = None
        from ultralytics.utils import DEFAULT_CFG_DICT

        for line in self.kd.idle_terms(int(train_args.get("epochs") or DEFAULT_CFG_DICT["epochs"])):
            LOGGER.warning(line)
        imgsz = int(train_args.get("imgsz") or 640)
        if isinstance(self.teacher, CachedTeacher) and self.teacher.cache.imgsz != imgsz:
            raise DetkdError(
                f"{self.teacher_cache}: the cache was built at {self.teacher.cache.imgsz} px and this run trains at "
                f"{imgsz} px; build a cache at --imgsz {imgsz} (the teacher sees another image at another size)"
            )
        own = (CachedTeacher, EMATeacher, PeerView)  # nothing trained to score before the run
        if resume_state is None and distributed.is_main() and not isinstance(self.teacher, own):
            teacher_score = self._check_teacher(imgsz, train_args.get("device"))
        self.student, self.composite = self._build_student(int(train_args.get("seed") or 0))
        resuming = resume_state is not None
        with prepared_run_folder(project, name, exist_ok, train_args.get("device"), resuming=resuming) as save_dir:
            check_room(save_dir, self.student)
            data_yaml = write_data(self.data, save_dir, resuming)
            if not resuming and distributed.is_main():
                dump_kd_config(self.kd, save_dir / "kd.yaml")
                write_meta(save_dir, {
                    "kind": "distill",
                    "teacher": self.teacher.describe(),
                    "teacher_spec": self.teacher_spec,
                    "peers": self.peer_specs,
                    "teacher_cache": self.teacher_cache,
                    "class_map": self.class_map,
                    "allow_random_teacher": self.allow_random_teacher,
                    "inputs": fingerprints(self.input_files()),
                    "unlabeled_images": len(self.data.reports[UNLABELED].samples)
                    if UNLABELED in self.data.reports else 0,
                    "teacher_on_val": teacher_score,
                    "student": self.student_spec,
                    "data": str(self.data.yaml_path),
                    "kd": self.kd.to_dict(),
                    "box_kd_mode": self.composite.box_method,
                    "train_args": train_args,
                    "threads": threads,
                    "on_nonfinite": on_nonfinite,
                    **run_environment(),
                })  # fmt: skip
            trainer = KDTrainer(
                self.student,
                self.teacher,
                self.composite,
                _overrides(self.student_spec, data_yaml, save_dir, **train_args),
                threads=threads,
                resume_state=resume_state,
                on_nonfinite=on_nonfinite,
                data=self.data,
                digests=self.digests,
                peers=self.peers,
            )
            for event, fns in self.callbacks.items():
                for fn in fns:
                    trainer.add_callback(event, fn)
            result = _run(trainer, save_dir, started, self.data)
            if self.peers and distributed.is_main():
                group = save_and_score_peers(
                    trainer, self.peers, result.last, self.data, imgsz, train_args.get("device")
                )
                meta = json.loads((save_dir / RUN_META).read_text())
                write_meta(save_dir, {**meta, "mutual": group})
                result.metrics.update({f"mutual/{r['name']}/mAP50-95": r["mAP50-95"] for r in group["models"]})
            return result

    def add_callback(self, event: str, fn: Callable[[Any], None]) -> None:
        """Call ``fn(trainer)`` on an Ultralytics training event (``on_train_epoch_end``, ``on_fit_epoch_end``,
        ``on_train_batch_end``, ... as ``YOLO.add_callback`` takes them) in every later :meth:`train`.

        The trainer is Ultralytics' ``DetectionTrainer`` (``trainer.epoch``, ``trainer.metrics``, ``trainer.save_dir``,
        ``trainer.label_loss_items(trainer.tloss, prefix="train")`` with the weighted ``train/kd/*`` terms that
        Ultralytics' own loggers record) plus, from ``on_train_epoch_end`` on, ``trainer.kd_terms``: this epoch's
        mean of every KD term, weighted and unweighted, per level and branch (the row written to ``kd_terms.csv``).
        An event name that does not exist is a :class:`~detkd.errors.ConfigError` naming the closest.
        """
        _check_event(event)
        self.callbacks.setdefault(event, []).append(fn)

    def input_files(self) -> list[Path]:
        """The files this run distils from (fingerprinted in the run, checked on resume)."""
        if self.teacher_cache is not None:
            return [Path(self.teacher_cache) / "cache.json"]
        if self.peer_specs:  # peers initialised from weights start from those files
            return [Path(p) for p in self.peer_specs if p.endswith(".pt")]
        return input_files(self.teacher_spec, self.class_map)


def _check_event(event: str) -> None:
    """``event`` is one of Ultralytics' training callback events, or a one-line error naming the closest."""
    import difflib

    from ultralytics.utils.callbacks.base import default_callbacks

    if event not in default_callbacks:
        close = difflib.get_close_matches(event, list(default_callbacks), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"callback event '{event}' does not exist{hint}; valid: {', '.join(default_callbacks)}")
