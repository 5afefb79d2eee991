"""Trainers: Ultralytics' ``DetectionTrainer`` subclassed, never copied.

``DetectorTrainer`` trains a prebuilt (safely loaded) model with Ultralytics' datasets, augmentation, assigner, EMA
and checkpoints, using every CPU core and no network. ``KDTrainer`` adds a frozen teacher and the KD objective:

* the KD adapters join the optimizer as extra parameter groups (decay for weights, none for biases);
* after Ultralytics builds its EMA (a copy of the bare student), the student's criterion becomes a
  :class:`~detkd.engine.criterion.KDCriterion`, so each step runs the student once and the teacher once (the
  teacher first, from ``preprocess_batch``, inside the same autocast);
* checkpoints hold the student only (the EMA never sees the teacher or adapters), so ``YOLO("best.pt")`` loads
  them with plain Ultralytics.

Both trainers write checkpoints atomically and keep a ``resume.pt`` beside ``last.pt`` (see
:mod:`detkd.engine.checkpointing`), from which a killed run continues where its last complete epoch ended; and
both run under ``torchrun`` (see :mod:`detkd.engine.distributed`), on GPUs and, with gloo, on CPUs.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detkd._offline import ensure_offline, offline_guards
from detkd.data.checked_dataset import checked_labels
from detkd.data.checks import split_report
from detkd.data.dataset import DataSpec, load_data_spec
from detkd.engine import distributed
from detkd.engine.checkpointing import (
    RESUME_FILE,
    RESUME_FORMAT,
    epoch_shuffle,
    plain,
    replace_text,
    restore_augmenters,
    restore_rng,
    rng_state,
    staged_writes,
    truncate_results_csv,
    use_epoch_shuffle,
)
from detkd.engine.criterion import KD_ITEM_NAMES, KDCriterion, NonFiniteLossError, ratio_item_names
from detkd.engine.kd_plot import plot_kd_terms
from detkd.errors import DetkdError
from detkd.losses.composite import KDComposite
from detkd.offline.dataset import MixedBatches, SoftLabelSource, split_soft
from detkd.offline.teacher import CachedTeacher
from detkd.types import Teacher

ensure_offline()

from ultralytics.models.yolo.detect import DetectionTrainer  # noqa: E402
from ultralytics.nn.distill_model import DistillationModel  # noqa: E402
from ultralytics.utils.torch_utils import strip_optimizer, unwrap_model  # noqa: E402

LOGGER = logging.getLogger(__name__)


def torch_device_name(device: str | int | None) -> str:
    """A torch device from a CLI-style one: ``0`` -> ``cuda:0``; ``cpu`` and ``cuda:1`` unchanged; None -> cpu."""
    text = "cpu" if device is None else str(device)
    return f"cuda:{text}" if text.isdigit() else text


def set_cpu_threads(threads: int | None) -> int:
    """Use ``threads`` (default: every core) for torch on CPU; Ultralytics leaves one core idle otherwise."""
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


@contextlib.contextmanager
def _ddp_without_device_ids() -> Iterator[None]:
    """Ultralytics wraps DDP with ``device_ids=[device.index]``, which torch refuses for CPU modules; on CPU (gloo)
    the wrap is made without device ids. Scoped to the trainer's setup."""
    original = nn.parallel.DistributedDataParallel

    class CPUDistributedDataParallel(original):  # type: ignore[misc, valid-type]
        def __init__(self, module: nn.Module, *args: Any, device_ids: Any = None, **kwargs: Any) -> None:
            super().__init__(module, *args, **kwargs)

    nn.parallel.DistributedDataParallel = CPUDistributedDataParallel  # type: ignore[misc]
    try:
        yield
    finally:
        nn.parallel.DistributedDataParallel = original  # type: ignore[misc]


class DetectorTrainer(DetectionTrainer):
    """Train a prebuilt Ultralytics detection model (no KD): teachers and baselines.

    Args:
        model: the model to train (built from YAML or loaded safely by detkd).
        overrides: Ultralytics training arguments (``data`` must be a resolved data YAML).
        threads: torch CPU threads (default: all cores).
        resume_state: the contents of a run's ``resume.pt`` (loaded safely by the caller) to continue from.
        data: the checked data spec whose samples the datasets use (default: ``overrides["data"]``, checked now).
    """

    def __init__(
        self,
        model: nn.Module,
        overrides: dict[str, Any],
        threads: int | None = None,
        resume_state: Mapping[str, Any] | None = None,
        *,
        data: DataSpec | None = None,
    ) -> None:
        if overrides.get("resume"):
            raise DetkdError("pass --resume RUN_DIR to detkd (Ultralytics' resume=... argument is not used by detkd)")
        if data is None:
            data = load_data_spec(overrides["data"])
        for split in ("train", "val"):
            split_report(data, split)
        self.data_spec = data
        self._prebuilt = model
        self._resume_state = resume_state
        self._pending_augment: Mapping[str, Any] | None = None
        # Gradient accumulation across an epoch boundary (see `accumulate`): the iteration of the last optimizer
        # step, this batch's iteration, the partial gradients of a resumed run, the resumed run's step offset.
        self._accumulate = 1
        self._last_step_ni = -1
        self._ni = -1
        self._pending_grads: list[Any] | None = None
        self._step_offset = 0
        # results.csv of a resumed run is kept (Ultralytics deletes it unless its own resume flag is set)
        overrides = {**overrides, "resume": bool(resume_state)}
        with offline_guards():
            super().__init__(overrides=overrides)
        if self.ddp:
            raise DetkdError(
                f"--device {self.args.device}: for several GPUs launch detkd with torchrun, e.g. "
                f"torchrun --nproc_per_node {self.world_size} -m detkd distill ... (see docs/scale.md)"
            )
        if distributed.launched():
            self.world_size = distributed.world_size()
        if self.device.type == "cpu":
            self.args.amp = False  # every rank must agree; CPU training never uses AMP
        self.threads = set_cpu_threads(threads) if self.device.type == "cpu" else None

    @property
    def accumulate(self) -> int:
        """Batches per optimizer step, as Ultralytics reads it.

        Ultralytics decides to step when ``ni - last_opt_step >= accumulate``, with ``last_opt_step`` a local of its
        loop that starts at -1, so a resumed run would step at its first batch even when the uninterrupted run was
        midway through an accumulation. Until a resumed run's first step, ``accumulate`` reads ``L + 1`` higher
        (``L``: the iteration of the last step before the checkpoint), which makes Ultralytics' test exactly the
        uninterrupted one, ``ni - L >= accumulate``; the partial gradients are restored with it.
        """
        return self._accumulate + self._step_offset

    @accumulate.setter
    def accumulate(self, value: int) -> None:
        self._accumulate = int(value)

    def check_resume(self, overrides: dict[str, Any]) -> None:
        """detkd resumes from its own ``resume.pt`` (loaded safely); Ultralytics' path would unpickle ``last.pt``."""
        self.resume = False

    def setup_model(self) -> None:
        self.model: Any = self._prebuilt
        return None

    def set_model_attributes(self) -> None:
        """Ultralytics' attributes; and its built-in KD (``distill_model=``) gets a teacher detkd rebuilt from the
        file's data, where Ultralytics would unpickle the path with plain pickle."""
        super().set_model_attributes()
        teacher = self.args.distill_model
        if isinstance(teacher, (str, Path)) and not isinstance(self.model, DistillationModel):
            from detkd.students import ultralytics_yolo as uy

            self.model = DistillationModel(teacher_model=uy.load_detection_model(teacher), student_model=self.model)

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None) -> Any:
        """Ultralytics' dataset, labelled from detkd's check of the split (no label cache read or written); its
        ``cache=disk`` image files live in the run folder, never beside the user's images. A KD run's training
        set also holds its unlabeled images and, from a teacher cache, the soft boxes of each image."""
        split = "train" if mode == "train" else "val"
        samples = list(self.data_spec.reports[split].samples)
        extra: dict[str, Any] = {}
        if split == "train":
            unlabeled = self.unlabeled_samples()
            if unlabeled:
                samples += unlabeled
                extra["unlabeled"] = {str(s.train_path) for s in unlabeled}
                listed = self.save_dir / "data" / "train_and_unlabeled.txt"
                listed.parent.mkdir(parents=True, exist_ok=True)
                replace_text(listed, "".join(f"{s.train_path}\n" for s in samples))
                img_path = str(listed)
            soft = self.soft_source(samples)
            if soft is not None:
                extra["soft"] = soft
        with checked_labels(samples, npy_dir=self.save_dir / "data" / "npy" / split, **extra):
            return super().build_dataset(img_path, mode, batch)

    def unlabeled_samples(self) -> list[Any]:
        """The unlabeled images this run trains on (a KD run's; none here)."""
        return []

    def soft_source(self, samples: list[Any]) -> Any:
        """Where the training images' soft boxes come from (a KD run from a teacher cache; none here)."""
        return None

    def _setup_ddp(self) -> None:
        """One process per device under torchrun: this rank's GPU (or the CPU with gloo), process group joined."""
        if self.device.type == "cuda":
            torch.cuda.set_device(distributed.local_rank())
            self.device = torch.device("cuda", distributed.local_rank())
        distributed.init(self.device.type)

    def _setup_train(self) -> None:
        with _ddp_without_device_ids() if self.device.type == "cpu" else contextlib.nullcontext():
            super()._setup_train()
        if self._resume_state is not None:
            self.restore(self._resume_state)
        criterion = self.build_criterion()
        for _ in range(self.start_epoch):  # a resumed run: the loss's per-epoch schedule (end-to-end heads)
            if hasattr(criterion, "update"):
                criterion.update()
        self.add_callback("on_train_start", lambda t: t._resume_accumulation())
        self.add_callback("on_train_epoch_start", lambda t: t._start_epoch_batches())
        self.add_callback("on_train_batch_start", lambda t: t._count_batch())

    # --- gradient accumulation across epoch boundaries ------------------------------------------------------------

    def _resume_accumulation(self) -> None:
        """After Ultralytics read its nominal ``accumulate``: offset it until the resumed run's first step."""
        if self._resume_state is not None and self._last_step_ni >= 0:
            self._step_offset = self._last_step_ni + 1

    def _start_epoch_batches(self) -> None:
        self._ni = self.epoch * len(self.train_loader) - 1
        if self._pending_grads is not None:  # after Ultralytics zeroed the gradients at the start of training
            optimizer: Any = self.optimizer
            params = [p for g in optimizer.param_groups for p in g["params"]]
            for p, g in zip(params, self._pending_grads):
                p.grad = None if g is None else g.to(p.device, p.dtype).clone()
            self._pending_grads = None

    def _count_batch(self) -> None:
        self._ni += 1

    def optimizer_step(self) -> None:
        """Ultralytics decided to step at this iteration: recorded (for resume), then :meth:`apply_optimizer_step`."""
        self._last_step_ni, self._step_offset = self._ni, 0
        self.apply_optimizer_step()

    def apply_optimizer_step(self) -> None:
        """Ultralytics' optimizer step (clip, step, zero the gradients, update the EMA)."""
        DetectionTrainer.optimizer_step(self)

    def train(self) -> None:
        with offline_guards():
            super().train()

    # --- checkpoints and resume -----------------------------------------------------------------------------------

    def resume_state(self) -> dict[str, Any]:
        """Everything needed to continue this run after the current epoch (see :mod:`detkd.engine.checkpointing`)."""
        stopper = {k: plain(v) for k, v in vars(self.stopper).items() if isinstance(v, (int, float, type(None)))}
        ema: Any = self.ema
        optimizer: Any = self.optimizer
        return {
            "format": RESUME_FORMAT,
            "epoch": self.epoch,
            "epochs": self.epochs,
            "model": unwrap_model(self.model).state_dict(),
            "ema": ema.ema.state_dict(),
            "updates": ema.updates,
            "optimizer": optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_fitness": plain(self.best_fitness),
            "stopper": stopper,
            "rng": rng_state(self.train_loader),
            "kd": self.kd_state(),
            "last_step": self._last_step_ni,  # the partial accumulation at the epoch boundary, restored on resume
            "grads": [None if p.grad is None else p.grad.detach().clone() for g in optimizer.param_groups
                      for p in g["params"]],
        }  # fmt: skip

    def plot_metrics(self) -> None:
        """Ultralytics' ``results.png``, and beside it detkd's ``kd_terms.png`` (the KD terms per epoch)."""
        super().plot_metrics()
        path = self.save_dir / KD_TERMS_CSV
        if path.is_file():
            plotted = plot_kd_terms(path)
            if plotted is not None:
                self.on_plot(plotted)

    def kd_state(self) -> dict[str, Any]:
        """State of the KD objective (none without KD)."""
        return {}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (a ``resume.pt``): weights, EMA, optimizer, schedules, random streams. A state
        that does not fit this run (another model, damaged fields) is one error naming the file."""
        try:
            self._restore(state)
        except DetkdError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
            why = " ".join(str(e).split())[:300]
            raise DetkdError(f"{self.wdir / RESUME_FILE}: does not fit this run ({type(e).__name__}: {why})") from e

    def _restore(self, state: Mapping[str, Any]) -> None:
        ema: Any = self.ema
        optimizer: Any = self.optimizer
        scheduler: Any = self.scheduler
        unwrap_model(self.model).load_state_dict(state["model"])
        ema.ema.load_state_dict(state["ema"])
        ema.updates = state["updates"]
        saved = state["optimizer"]
        if len(saved["param_groups"]) != len(optimizer.param_groups):
            raise DetkdError(
                f"resume: the saved optimizer has {len(saved['param_groups'])} parameter groups, this run has "
                f"{len(optimizer.param_groups)} (was the KD config changed since the run started?)"
            )
        for group, live in zip(saved["param_groups"], optimizer.param_groups):
            group["fused"] = live.get("fused")  # the device, not the checkpoint, picks the kernel
        optimizer.load_state_dict(saved)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best_fitness = state["best_fitness"]
        for key, value in state["stopper"].items():  # numbers only, onto fields the stopper has
            if key not in vars(self.stopper) or not isinstance(value, (int, float, type(None))):
                raise ValueError(f"stopper.{key} = {value!r} is not one of the early stopper's numbers")
        self.stopper.__dict__.update(state["stopper"])
        self.start_epoch = int(state["epoch"]) + 1
        scheduler.last_epoch = self.start_epoch - 1
        self._last_step_ni = int(state.get("last_step", -1))
        self._pending_grads = list(state.get("grads") or []) or None
        if self._pending_grads is not None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            shapes_ok = len(params) == len(self._pending_grads) and all(
                g is None or (isinstance(g, torch.Tensor) and g.shape == p.shape)
                for p, g in zip(params, self._pending_grads)
            )
            if not shapes_ok:
                raise ValueError("the saved gradients do not match the model's parameters")
        restore_rng(state["rng"], self.train_loader)
        self._pending_augment = state["rng"]  # re-applied if Ultralytics rebuilds the augmentations this epoch
        if distributed.is_main():
            truncate_results_csv(self.csv, self.start_epoch)
        LOGGER.info("resuming at epoch %d of %d from %s", self.start_epoch + 1, self.epochs, self.wdir / RESUME_FILE)

    def get_dataloader(self, dataset_path: str, batch_size: int = 16, rank: int = 0, mode: str = "train") -> Any:
        loader = super().get_dataloader(dataset_path, batch_size, rank, mode)
        if mode == "train":
            use_epoch_shuffle(loader)
            self.mix_batches(loader, batch_size)
        return loader

    def mix_batches(self, loader: Any, batch_size: int) -> None:
        """Set the labelled/unlabeled make-up of each training batch (a KD run with unlabeled images)."""
        return None

    def _close_dataloader_mosaic(self) -> None:
        super()._close_dataloader_mosaic()
        pending, self._pending_augment = self._pending_augment, None
        # The continued run closed mosaic before its checkpoint: its rebuilt augmentations resume their streams
        if pending is not None and self.epoch == self.start_epoch > self.epochs - self.args.close_mosaic:
            restore_augmenters(pending, self.train_loader.dataset)

    def build_criterion(self) -> Any:
        """The training loss, set on the student (Ultralytics' own here; built now rather than at the first step)."""
        model: Any = unwrap_model(self.model)
        if getattr(model, "criterion", None) is None:
            model.criterion = model.init_criterion()
        return model.criterion

    def save_model(self) -> bool:
        """Ultralytics' checkpoints plus ``resume.pt``, each written in full, then renamed into place."""
        final = (self.last, self.best, self.wdir)
        order = (RESUME_FILE, "best.pt", "last.pt")
        with staged_writes(self.wdir, f"the epoch-{self.epoch + 1} checkpoints", order) as tmp:
            self.last, self.best, self.wdir = tmp / "last.pt", tmp / "best.pt", tmp
            try:
                super().save_model()
            finally:
                self.last, self.best, self.wdir = final
            torch.save(self.resume_state(), tmp / RESUME_FILE)
        return True

    def final_eval(self) -> None:
        """Ultralytics strips the optimizer from ``last.pt``/``best.pt`` in place; detkd strips copies and renames."""
        cpu_ddp = self.world_size > 1 and self.device.type == "cpu"
        if not distributed.is_main():
            if not cpu_ddp:
                super().final_eval()
            return
        final = (self.last, self.best)
        with staged_writes(self.wdir, "the final checkpoints", ("best.pt", "last.pt")) as tmp:
            for f in final:
                if f.exists():
                    shutil.copy2(f, tmp / f.name)
            self.last, self.best = tmp / "last.pt", tmp / "best.pt"
            try:
                if cpu_ddp:
                    # Ultralytics' standalone validator assumes a GPU per rank: strip only (score with detkd eval)
                    for f in (self.last, self.best):
                        if f.exists():
                            strip_optimizer(f)
                    LOGGER.info("CPU DDP: final validation of best.pt skipped (run detkd eval on it)")
                else:
                    with _logged_as(tmp, self.wdir):  # "Validating <staging>/best.pt" would name a passing file
                        super().final_eval()
            finally:
                self.last, self.best = final
        (self.wdir / RESUME_FILE).unlink(missing_ok=True)  # the run is complete: nothing left to resume


@contextlib.contextmanager
def _logged_as(staged: Path, final: Path) -> Iterator[None]:
    """Ultralytics' log lines name ``final`` where they would name ``staged`` (a folder that is renamed away)."""
    ul = logging.getLogger("ultralytics")

    def rename(record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and str(staged) in record.msg:
            record.msg = record.msg.replace(str(staged), str(final))
        return True

    ul.addFilter(rename)
    try:
        yield
    finally:
        ul.removeFilter(rename)


KD_TERMS_CSV = "kd_terms.csv"


def write_epoch_row(path: Path, epoch: int, values: Mapping[str, float]) -> None:
    """Write ``values`` as the row of ``epoch`` (1-based) in the CSV at ``path``, dropping rows of this epoch and
    later (left by a run killed after logging them, then resumed); columns are the union over rows. The file is
    replaced atomically; a failure to write it is a warning, never the end of the run."""
    rows: list[dict[str, str]] = []
    try:
        if path.is_file():
            with path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("epoch", "").isdigit() and int(r["epoch"]) < epoch]
        rows.append({"epoch": str(epoch), **{k: f"{v:.6g}" for k, v in values.items()}})
        columns = ["epoch", *sorted({k for r in rows for k in r} - {"epoch"}, key=lambda k: (k.count("/"), k))]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        replace_text(path, text.getvalue())
    except OSError as e:
        LOGGER.warning("%s: could not write the KD terms of epoch %d (%s)", path, epoch, e)


class KDTrainer(DetectorTrainer):
    """Distil a frozen teacher into the student while it trains.

    Args:
        model: the student.
        teacher: the frozen teacher.
        composite: the KD objective for this pair (holds the adapters).
        overrides, threads, resume_state, data: as for :class:`DetectorTrainer`.
        on_nonfinite: ``stop`` (raise, naming the term, epoch and batch) or ``skip`` (drop that optimizer step,
            warn, count; stop after :data:`~detkd.engine.criterion.MAX_CONSECUTIVE_SKIPS` in a row).
        digests: the content key of each training image (its user's file), for a teacher from a cache.
    """

    def __init__(
        self,
        model: nn.Module,
        teacher: Teacher,
        composite: KDComposite,
        overrides: dict[str, Any],
        threads: int | None = None,
        resume_state: Mapping[str, Any] | None = None,
        on_nonfinite: str = "stop",
        *,
        data: DataSpec | None = None,
        digests: Mapping[str, str] | None = None,
    ) -> None:
        self.teacher = teacher
        self.composite = composite
        self.on_nonfinite = on_nonfinite
        self.criterion: KDCriterion | None = None
        self.digests = dict(digests or {})
        super().__init__(model, overrides, threads, resume_state, data=data)

    def setup_model(self) -> None:
        super().setup_model()
        self.teacher.to(self.device)
        self.composite.to(self.device)
        return None

    def build_optimizer(
        self,
        model: nn.Module,
        name: str = "auto",
        lr: float = 0.001,
        momentum: float = 0.9,
        decay: float = 1e-5,
        iterations: float = 1e5,
    ) -> torch.optim.Optimizer:
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        if not self.composite.use_feature:  # adapters and method modules only serve feature imitation
            return optimizer
        params = list(self.composite.parameters())
        weights = [p for p in params if p.dim() > 1]  # conv kernels decay; biases and norm scales do not
        others = [p for p in params if p.dim() <= 1]
        optimizer.add_param_group({"params": weights, "weight_decay": decay, "param_group": "weight"})
        optimizer.add_param_group({"params": others, "weight_decay": 0.0, "param_group": "bias"})
        LOGGER.info(
            "KD modules (adapters + %s): %d parameters added to the optimizer",
            self.composite.cfg.feature.method,
            sum(p.numel() for p in params),
        )
        return optimizer

    def _setup_train(self) -> None:
        super()._setup_train()  # builds the EMA from the bare student: the teacher never enters a checkpoint
        criterion = self.criterion
        assert criterion is not None  # set by build_criterion
        if self.world_size > 1 and self._resume_state is None:
            distributed.broadcast_parameters(self.composite)  # every rank's adapters start from rank 0's
        # detkd's own hooks run first: Ultralytics' loggers and the user's callbacks then see the epoch's pooled
        # losses and its KD terms
        self.callbacks["on_train_epoch_start"].insert(
            0, lambda t: criterion.start_epoch(t.epoch, t.epochs, len(t.train_loader))
        )
        self.callbacks["on_train_epoch_end"][:0] = [lambda t: t.reduce_epoch_losses(), lambda t: t.log_kd_terms()]

    def preprocess_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Soft boxes out of the labels, Ultralytics' preprocessing (device, scaling, multi-scale), then the
        teacher's forward (or the cache's targets) on the result."""
        if self.cache_teacher is not None:
            batch = split_soft(batch)
        batch = super().preprocess_batch(batch)
        if self.criterion is not None:
            self.criterion.run_teacher(batch)
        return batch

    @property
    def cache_teacher(self) -> CachedTeacher | None:
        return self.teacher if isinstance(self.teacher, CachedTeacher) else None

    def unlabeled_samples(self) -> list[Any]:
        report = self.data_spec.reports.get("unlabeled")
        return list(report.samples) if report is not None else []

    def soft_source(self, samples: list[Any]) -> Any:
        if self.cache_teacher is None:
            return None
        digests = {str(s.train_path): self.digests[str(s.image)] for s in samples}
        return SoftLabelSource(self.cache_teacher.cache, digests)

    def mix_batches(self, loader: Any, batch_size: int) -> None:
        dataset = loader.dataset
        if not getattr(dataset, "unlabeled", None) or self.world_size > 1:
            if getattr(dataset, "unlabeled", None):
                LOGGER.warning("unlabeled images under DDP: each rank's batches mix them at random (not a fixed share)")
            return
        inner = loader.batch_sampler  # Ultralytics' repeat sampler around torch's batch sampler
        seed = int(getattr(epoch_shuffle(loader), "seed", 0) or 0)
        unl = dataset.unlabeled
        labelled = [i for i, f in enumerate(dataset.im_files) if os.path.abspath(f) not in unl]
        unlabeled = [i for i, f in enumerate(dataset.im_files) if os.path.abspath(f) in unl]
        fraction = self.composite.cfg.unlabeled.fraction
        inner.sampler = MixedBatches(labelled, unlabeled, batch_size, fraction, seed)
        LOGGER.info("training batches: %d labelled + %d unlabeled images (kd.unlabeled.fraction %.2f); %d labelled "
                    "and %d unlabeled images in all", inner.sampler.per, inner.sampler.k, fraction, len(labelled),
                    len(unlabeled))  # fmt: skip

    def build_criterion(self) -> KDCriterion:
        student: Any = unwrap_model(self.model)
        unlabeled = frozenset(os.path.abspath(str(s.train_path)) for s in self.unlabeled_samples())
        student.criterion = self.criterion = KDCriterion(
            student, self.teacher, self.composite, on_nonfinite=self.on_nonfinite, unlabeled=unlabeled
        )
        return self.criterion

    def apply_optimizer_step(self) -> None:
        """Drop a step whose loss was non-finite (``skip``); average the adapters' gradients over ranks (DDP)."""
        crit = self.criterion
        skip = crit is not None and crit.take_skip()
        if self.world_size > 1:
            skip = distributed.any_rank(skip, self.device)  # every rank drops the same step
        if skip:
            optimizer: Any = self.optimizer
            optimizer.zero_grad()
            return
        if self.world_size > 1:
            distributed.average_gradients(self.composite.parameters())
        super().apply_optimizer_step()

    def reduce_epoch_losses(self) -> None:
        """Under DDP: log this rank's epoch means of the KD terms, then average every loss item over ranks. An epoch
        whose every step was skipped (``skip`` mode) trained nothing: that stops the run instead of logging zeros."""
        crit = self.criterion
        if crit is not None:
            all_skipped = crit.step > 0 and crit.skipped >= crit.step
            if self.world_size > 1:
                all_skipped = distributed.any_rank(all_skipped, self.device)
            if all_skipped:
                raise NonFiniteLossError(
                    f"epoch {self.epoch + 1}: every step had a non-finite loss and was skipped, so nothing was "
                    "trained (a KD weight of inf, or an lr0 that diverges?); the last saved checkpoint is intact"
                )
        if self.criterion is not None and self.criterion.skipped:
            LOGGER.warning("epoch %d: %d step(s) skipped on non-finite losses", self.epoch + 1, self.criterion.skipped)
            self.criterion.skipped = 0
        if self.world_size <= 1 or not self.tloss:
            return
        local = {k: float(v) for k, v in self.tloss.items()}
        r = distributed.rank()
        LOGGER.info("rank %d epoch %d KD terms: %s", r, self.epoch + 1,
                    ", ".join(f"{k}={local[k]:.4g}" for k in KD_ITEM_NAMES if k in local))  # fmt: skip
        self.save_dir.mkdir(parents=True, exist_ok=True)
        with (self.save_dir / f"losses_rank{r}.jsonl").open("a") as fh:
            fh.write(json.dumps({"epoch": self.epoch + 1, **local}) + "\n")
        self.tloss = distributed.mean_over_ranks(self.tloss)

    def log_kd_terms(self) -> None:
        """Append this epoch's mean of every named KD term (weighted and unweighted, per level and branch) to
        ``kd_terms.csv``; under DDP pooled over every rank's steps."""
        if self.criterion is None:
            return
        means = distributed.pooled_means(*self.criterion.epoch_terms())
        counts = {f"data/{k}": float(v) for k, v in self.criterion.take_counts().items()}  # this rank's images
        if counts.get("data/unlabeled_images"):
            LOGGER.info("epoch %d: %d images (%d unlabeled), %d pseudo-labels, %d soft boxes", self.epoch + 1,
                        counts.get("data/images", 0), counts["data/unlabeled_images"],
                        counts.get("data/pseudo_labels", 0), counts.get("data/soft_boxes", 0))  # fmt: skip
        self.kd_terms = {**means, **counts}  # for callbacks (Distiller.add_callback) of this epoch
        if distributed.is_main() and (means or counts):
            write_epoch_row(self.save_dir / KD_TERMS_CSV, self.epoch + 1, self.kd_terms)

    def kd_state(self) -> dict[str, Any]:
        balancer = self.composite.balancer
        return {
            "modules": self.composite.state_dict(),
            "balancer": balancer.state_dict() if balancer is not None else None,
        }

    def _restore(self, state: Mapping[str, Any]) -> None:
        kd = state.get("kd") or {}
        if not isinstance(kd, Mapping) or "modules" not in kd:
            raise DetkdError("resume: the saved state has no KD adapters (it comes from a run without KD)")
        self.composite.load_state_dict(kd["modules"])
        if self.composite.balancer is not None and kd.get("balancer"):
            self.composite.balancer.load_state_dict(kd["balancer"])
        super()._restore(state)

    def label_loss_items(self, loss_items: dict | None = None, prefix: str = "train") -> Any:
        """Validation runs the bare student (no teacher), so KD items are logged for training only."""
        items = super().label_loss_items(loss_items, prefix)
        if prefix == "train":
            return items
        kd = tuple(f"{prefix}/{k}" for k in (*KD_ITEM_NAMES, *ratio_item_names(self.composite)))
        if isinstance(items, dict):
            return {k: v for k, v in items.items() if k not in kd}
        return [k for k in items if k not in kd]
